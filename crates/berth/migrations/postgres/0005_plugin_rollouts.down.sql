ALTER TABLE rollouts DROP COLUMN plugin;
