DROP TABLE marina_app_roles;
