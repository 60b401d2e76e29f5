-- Each start of a runtime's container gets a new run id, written to
-- <state dir>/.berth/run_id before the container starts; state-store batches
-- of another run are refused.
ALTER TABLE runtimes ADD COLUMN run_id TEXT;
