DROP INDEX plugin_updates_runtime;
DROP INDEX plugin_updates_one_pending;
DROP TABLE plugin_updates;
DROP TABLE plugins;
