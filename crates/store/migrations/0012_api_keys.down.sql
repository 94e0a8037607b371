DROP TABLE marina_api_keys;
