"""The OpenAI / CometAPI dialect: multipart `POST /images/edits`, JSON reply."""
