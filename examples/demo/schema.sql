-- tenantgate demo schema: two tenants (acme, globex) in shared tables, isolated twice over:
-- tenantgate checks every statement, and Row-Level Security in Postgres backs it up. A third
-- tenant (initech) has a schema of its own (schema isolation): tenantgate sets search_path.
--
-- Load as a superuser into database "app":   psql -d app -f examples/demo/schema.sql
-- Safe to re-run: it drops and recreates the demo tables and keeps the role.

\set ON_ERROR_STOP on
BEGIN;

-- The role tenantgate logs in as: not the table owner, and NOBYPASSRLS, so RLS applies to it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_rw') THEN
        CREATE ROLE app_rw LOGIN NOBYPASSRLS PASSWORD 'app_rw_pw';
    END IF;
END
$$;
ALTER ROLE app_rw LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD 'app_rw_pw';

DROP TABLE IF EXISTS orders, customers, plans CASCADE;
DROP SCHEMA IF EXISTS tenant_initech CASCADE;

-- Shared by all tenants: readable, not writable through tenantgate.
CREATE TABLE plans (
    id    bigint PRIMARY KEY,
    name  text NOT NULL,
    price numeric(10, 2) NOT NULL
);

CREATE TABLE customers (
    tenant_id text   NOT NULL,
    id        bigint NOT NULL,
    name      text   NOT NULL,
    email     text,
    PRIMARY KEY (tenant_id, id),
    -- id alone is unique too: with the composite foreign key below this proves that
    -- `orders o JOIN customers c ON c.id = o.customer_id` stays inside o's tenant.
    UNIQUE (id)
);

CREATE TABLE orders (
    tenant_id   text        NOT NULL,
    id          bigint      NOT NULL,
    customer_id bigint      NOT NULL,
    total       numeric(12, 2) NOT NULL,
    status      text        NOT NULL DEFAULT 'new',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id)
);

INSERT INTO plans (id, name, price) VALUES
    (1, 'starter', 0),
    (2, 'team', 49),
    (3, 'enterprise', 499);

INSERT INTO customers (tenant_id, id, name, email) VALUES
    ('acme',   1, 'Wile E. Coyote', 'wile@acme.example'),
    ('acme',   2, 'Road Runner',    'beep@acme.example'),
    ('globex', 3, 'Hank Scorpio',   'hank@globex.example'),
    ('globex', 4, 'Homer Simpson',  'homer@globex.example');

INSERT INTO orders (tenant_id, id, customer_id, total, status) VALUES
    ('acme',   1, 1, 120.00, 'paid'),
    ('acme',   2, 1,  35.50, 'new'),
    ('acme',   3, 2, 999.99, 'shipped'),
    ('globex', 4, 3, 5000.00, 'paid'),
    ('globex', 5, 4,   12.25, 'new'),
    ('globex', 6, 4,   80.00, 'cancelled');

-- Row-Level Security: a session sees and writes only rows of app.current_tenant, which
-- tenantgate sets from the authenticated login. FORCE makes it apply to the owner as well.
ALTER TABLE customers ENABLE ROW LEVEL SECURITY;
ALTER TABLE customers FORCE ROW LEVEL SECURITY;
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE orders FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON customers
    USING (tenant_id = current_setting('app.current_tenant', true))
    WITH CHECK (tenant_id = current_setting('app.current_tenant', true));
CREATE POLICY tenant_isolation ON orders
    USING (tenant_id = current_setting('app.current_tenant', true))
    WITH CHECK (tenant_id = current_setting('app.current_tenant', true));

GRANT USAGE ON SCHEMA public TO app_rw;
GRANT SELECT, INSERT, UPDATE, DELETE ON customers, orders TO app_rw;
GRANT SELECT ON plans TO app_rw;

-- Schema isolation: initech's tables in its own schema (same columns, so the app's queries do
-- not change when a tenant moves between strategies).
CREATE SCHEMA tenant_initech;
CREATE TABLE tenant_initech.customers (LIKE public.customers INCLUDING ALL);
CREATE TABLE tenant_initech.orders (LIKE public.orders INCLUDING ALL);
INSERT INTO tenant_initech.customers (tenant_id, id, name, email) VALUES
    ('initech', 1, 'Peter Gibbons', 'peter@initech.example');
INSERT INTO tenant_initech.orders (tenant_id, id, customer_id, total, status) VALUES
    ('initech', 1, 1, 42.00, 'paid'),
    ('initech', 2, 1, 7.00, 'new');
GRANT USAGE ON SCHEMA tenant_initech TO app_rw;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA tenant_initech TO app_rw;

COMMIT;
