DROP TABLE operations;
DROP TABLE runtimes;
DROP TABLE pin_history;
DROP TABLE pins;
DROP TABLE templates;
