-- gpjobs schema v3: a claim walks each claimable status's jobs in FIFO order and stops at the first it may run,
-- whatever the queue's length (store/sql.py CLAIM_NEXT; bench/queue_scale.py). jobs_queue leads with
-- run_after_ms, so FIFO order over it needed a sort of every queued row.
CREATE INDEX jobs_fifo ON jobs (status, created_ms);
