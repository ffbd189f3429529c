-- Runs once, when the compose stack's PostgreSQL starts on an empty volume: one login role
-- and one schema per service, each role owning only its schema. The services migrate their
-- schemas themselves at start-up, as these roles.
--
-- Development passwords: the compose file is for laptops. Production databases get their
-- roles from the platform team, and the services their DATABASE_URLs from Secrets.
CREATE ROLE users_svc LOGIN PASSWORD 'users-dev-password';
CREATE ROLE catalog_svc LOGIN PASSWORD 'catalog-dev-password';
CREATE ROLE ordering_svc LOGIN PASSWORD 'ordering-dev-password';
CREATE ROLE payments_svc LOGIN PASSWORD 'payments-dev-password';

CREATE SCHEMA users AUTHORIZATION users_svc;
CREATE SCHEMA catalog AUTHORIZATION catalog_svc;
CREATE SCHEMA ordering AUTHORIZATION ordering_svc;
CREATE SCHEMA payments AUTHORIZATION payments_svc;

REVOKE ALL ON SCHEMA public FROM PUBLIC;
