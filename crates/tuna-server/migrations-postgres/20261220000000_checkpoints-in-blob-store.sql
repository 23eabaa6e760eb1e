-- Issue 10: checkpoints in the blob store, so that any machine can resume, download and chat
-- with them. `blob_files` (JSON, NULL for checkpoints recorded before) is the checkpoint's
-- manifest: `{"prefix": "checkpoints/<job>/attempt-<n>/step-<s>", "files": [{"name", "bytes",
-- "sha256"}]}`. The prefix names the claim that uploaded it, so a stale (fenced) worker's upload
-- lands where no row points.

ALTER TABLE checkpoints ADD COLUMN blob_files TEXT;
