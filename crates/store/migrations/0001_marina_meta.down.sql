DROP TABLE marina_meta;
