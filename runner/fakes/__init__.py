"""Fake image-edit providers over real HTTP; import them from `runner.testing`.

* `common` - the threaded HTTP server, handler plumbing, lifecycle and fault knobs;
* `multipart` - a strict `multipart/form-data` parser;
* `render` - the deterministic edit every fake performs, LRU-cached, and fingerprints;
* `openai`, `openai_http` - `FakeProvider`, the OpenAI/CometAPI `/v1/images/edits` dialect;
* `venice`, `venice_http`, `venice_bodies`, `venice_catalogue` - `FakeVenice`, the Venice
  `/api/v1/image/edit` and `/image/multi-edit` dialect with its model list and x402 sign-in.
"""
