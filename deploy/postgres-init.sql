-- Run once by the postgres image on an empty data volume (docker-compose.yml mounts it into
-- /docker-entrypoint-initdb.d). Each service gets its own database and its own login role, so
-- the execution service cannot read the vault's ciphertexts and neither runs as superuser.
-- Passwords come from the container's environment (psql's \getenv, PostgreSQL 15+).

\getenv keyvault_password KEYVAULT_DB_PASSWORD
\getenv execution_password EXECUTION_DB_PASSWORD

CREATE ROLE keyvault LOGIN PASSWORD :'keyvault_password';
CREATE DATABASE keyvault OWNER keyvault;
REVOKE ALL ON DATABASE keyvault FROM PUBLIC;

CREATE ROLE execution LOGIN PASSWORD :'execution_password';
CREATE DATABASE execution OWNER execution;
REVOKE ALL ON DATABASE execution FROM PUBLIC;
