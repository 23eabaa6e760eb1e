-- Issue 14: GPUs as worker slots.
--
-- * `jobs.compute` is the kind of slot a job asks for (`tuna.compute` of its spec: `cpu` or
--   `gpu`); a claim only takes jobs of its slot's kind.
-- * `jobs.ran_on` records the device the job's latest run trained on (JSON: slot, backend,
--   adapter name, worker), kept after the run ends (`device` is cleared with the claim).
-- * `workers.device_info` describes a worker's GPU slots (JSON: slot → name, memory, software),
--   for the compute choices that estimates and the console list.

ALTER TABLE jobs ADD COLUMN compute TEXT NOT NULL DEFAULT 'cpu';
ALTER TABLE jobs ADD COLUMN ran_on TEXT;
ALTER TABLE workers ADD COLUMN device_info TEXT;
