-- gpjobs schema v2: server crashes a job survived while running. They give the attempt back (like a graceful
-- shutdown) and are counted on their own, so a job that crashes the server every time is bounded.
ALTER TABLE jobs ADD COLUMN server_crashes INTEGER NOT NULL DEFAULT 0;
