"""The Venice dialect: `/image/edit` and `/image/multi-edit`, its model list, x402."""
