"""Getting results out: `storage` (ObjectStore: local, Supabase), `webhooks` (Standard Webhooks
delivery) and `reporting` (result recorded, then webhook, then its outcome)."""
