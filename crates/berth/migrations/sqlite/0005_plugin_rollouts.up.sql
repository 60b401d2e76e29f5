-- A rollout may apply one plugin's update across a template's runtimes
-- instead of moving them to a digest: `plugin` names it, and `to_digest`
-- then holds the commit being installed.
ALTER TABLE rollouts ADD COLUMN plugin TEXT;
