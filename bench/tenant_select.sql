-- pgbench custom script for the tenant isolation cost cells of bench/pgbench.sh: a point
-- select filtered to the session's tenant, as an application behind tenantgate writes it.
-- Run with -M extended or -M prepared: in simple mode pgbench inlines :aid as a literal, which
-- the policy (require_parameters = true) rejects. bench/pgbench.sh passes -D naccounts=N.
\set aid random(1, :naccounts)
SELECT abalance FROM tenant_accounts WHERE tenant_id = current_setting('app.current_tenant') AND aid = :aid;
