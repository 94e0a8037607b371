DROP TABLE kv_indexes;
