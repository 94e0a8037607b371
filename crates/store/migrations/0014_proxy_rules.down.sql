DROP TABLE marina_proxy_rules;
