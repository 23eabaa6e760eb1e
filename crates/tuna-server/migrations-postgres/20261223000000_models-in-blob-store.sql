-- Issue 10: base models added with `tuna models add` are stored in the blob store, so every
-- worker can read them. `blob_files` (JSON, NULL for models only recorded by path: the demo,
-- the models file, `--keep-in-place`) is the model's manifest: `{"prefix":
-- "models/sha256-<content hash>", "files": [{"name", "bytes", "sha256"}]}`; the prefix is the
-- content hash of the files, so the same model added twice is stored once.

ALTER TABLE models ADD COLUMN blob_files TEXT;
