-- pgbench custom script for the (future) "policy enforcement on vs off" runs of bench/pgbench.sh.
-- Same statement as the built-in select-only script (-S). Run it with -M extended or -M prepared
-- under enforcement: in simple mode pgbench inlines :aid as a literal, which a policy with
-- require_parameters = true rejects.
\set aid random(1, 100000 * :scale)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
