DROP TABLE rollout_targets;
DROP TABLE rollouts;
DROP TABLE rejected_digests;
DROP TABLE image_observations;
