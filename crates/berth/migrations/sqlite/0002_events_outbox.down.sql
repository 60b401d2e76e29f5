DROP TABLE outbox;
DROP TABLE job_results;
DROP TABLE notifications;
DROP TABLE health_events;
