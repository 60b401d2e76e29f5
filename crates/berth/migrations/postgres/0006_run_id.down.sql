ALTER TABLE runtimes DROP COLUMN run_id;
