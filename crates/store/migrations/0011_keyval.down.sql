DROP TABLE kv_dlq;
DROP TABLE kv_queue;
DROP TABLE kv_entries;
