-- pgproxy policy corpus: BENIGN statements (usability regression suite).
--
-- Statements a real application, driver or ORM sends. Every case must be ALLOWED under
-- the demo catalog and policy: holding one is a bug (false holds teach reviewers to click
-- "approve" without reading). Format, classes and [markers]: tests/corpora/README.md.
-- Objects beyond the demo data come from tests/corpora/setup.sql.
-- Nothing above the first "-- expect:" line belongs to a case.

-- expect: allow | trivial: SELECT 1 (connection health check)
SELECT 1;

-- expect: allow | trivial: now()
SELECT now();

-- expect: allow | trivial: version()
SELECT version();

-- expect: allow | trivial: current_schema()
SELECT current_schema();

-- expect: allow | trivial: current database and user
SELECT current_database(), current_user, session_user;

-- expect: allow | trivial: backend pid and recovery state
SELECT pg_backend_pid(), pg_is_in_recovery();

-- expect: allow | trivial: generate_series in the select list
SELECT generate_series(1, 10);

-- expect: allow | trivial: generate_series in FROM with a column alias
SELECT n, n * n AS square FROM generate_series(1, 5) AS g(n);

-- expect: allow | trivial: pg_sleep(0)
SELECT pg_sleep(0);

-- expect: allow | trivial: current_setting('TimeZone')
SELECT current_setting('TimeZone');

-- expect: allow | trivial: server version number
SELECT current_setting('server_version_num')::int;

-- expect: allow | trivial: VALUES list
VALUES (1, 'a'), (2, 'b');

-- expect: allow | trivial: two harmless statements in one query string
SELECT 1; SELECT 2;

-- expect: allow | read-orders: one order by id
SELECT id, customer_id, total, status, created_at FROM orders WHERE id = 1;

-- expect: allow | read-orders: SELECT * of the untagged orders, paginated
SELECT * FROM orders WHERE customer_id = 42 ORDER BY created_at DESC LIMIT 20 OFFSET 40;

-- expect: allow | read-orders: keyset pagination
SELECT id, total FROM orders
WHERE (created_at, id) > ('2023-05-01 00:00:00+00', 100)
ORDER BY created_at, id
LIMIT 25;

-- expect: allow | read-orders: ids from an array literal
SELECT id, status FROM orders WHERE id = ANY ('{1,2,3}'::int[]);

-- expect: allow | read-orders: coalesce and to_char over untagged columns
SELECT coalesce(status, 'unknown'), to_char(created_at, 'YYYY-MM') FROM orders WHERE id = 5;

-- expect: allow | read-orders: DISTINCT status
SELECT DISTINCT status FROM orders;

-- expect: allow | read-orders: job-queue pattern FOR UPDATE SKIP LOCKED
SELECT id FROM orders WHERE status = 'pending' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED;

-- expect: allow | read-orders: EXISTS probe
SELECT EXISTS (SELECT 1 FROM orders WHERE id = 1);

-- expect: allow | read-orders: whole-row reference of the untagged orders
SELECT o FROM orders o WHERE id = 1;

-- expect: allow | read-orders: row_to_json of an orders row
SELECT row_to_json(o) FROM orders o WHERE o.id = 1;

-- expect: allow | read-orders: TABLE orders with a limit
TABLE orders ORDER BY id LIMIT 5;

-- expect: allow | read-orders: json_build_object over untagged columns
SELECT json_build_object('id', id, 'total', total, 'status', status) FROM orders WHERE customer_id = 7;

-- expect: allow | read-orders: array_agg of order ids
SELECT array_agg(id ORDER BY id) FROM orders WHERE customer_id = 1;

-- expect: allow | read-customers: count(*) of customers
SELECT count(*) FROM customers;

-- expect: allow | read-customers: count(id) of customers
SELECT count(id) FROM customers;

-- expect: allow | read-customers: count(1) with an untagged filter
SELECT count(1) FROM customers WHERE created_at > now() - interval '30 days';

-- expect: allow | read-customers: untagged columns of one customer
SELECT id, country, plan, created_at FROM customers WHERE id = 1;

-- expect: allow | read-customers: untagged filters, ordering and limit
SELECT id FROM customers WHERE country IN ('DE', 'FR') AND plan <> 'free' ORDER BY created_at LIMIT 50;

-- expect: allow | read-customers: functions over untagged columns
SELECT lower(country), upper(plan) FROM customers WHERE id = 2;

-- expect: allow | read-customers: EXISTS probe by id
SELECT EXISTS (SELECT 1 FROM customers WHERE id = 7);

-- expect: allow | read-customers: CASE over plan
SELECT id, CASE WHEN plan = 'enterprise' THEN 'priority' ELSE 'standard' END AS tier FROM customers WHERE id < 10;

-- expect: allow | write-customers: UPDATE of an untagged customers column with WHERE
UPDATE customers SET plan = 'pro' WHERE id = 1;

-- expect: allow | read-customers: column-alias list naming only the first (id) column
SELECT a FROM customers AS c(a) WHERE a < 5;

-- expect: allow | aggregate: per-country counts
SELECT country, count(*) FROM customers GROUP BY country ORDER BY 2 DESC;

-- expect: allow | aggregate: per-plan counts with HAVING on count
SELECT plan, count(*) FROM customers WHERE created_at >= '2023-06-01' GROUP BY plan HAVING count(*) > 10;

-- expect: allow | aggregate: per-status totals
SELECT status, count(*), sum(total), avg(total)::numeric(10,2) FROM orders GROUP BY status;

-- expect: allow | aggregate: monthly revenue
SELECT date_trunc('month', created_at) AS month, sum(total) FROM orders GROUP BY 1 ORDER BY 1;

-- expect: allow | aggregate: FILTER on an untagged column
SELECT count(*) FILTER (WHERE status = 'refunded') AS refunded, count(*) AS all_orders FROM orders;

-- expect: allow | aggregate: window function over untagged columns
SELECT id, total, rank() OVER (PARTITION BY customer_id ORDER BY total DESC) FROM orders WHERE customer_id = 1;

-- expect: allow | aggregate: DISTINCT ON an untagged column
SELECT DISTINCT ON (customer_id) customer_id, id, created_at FROM orders ORDER BY customer_id, created_at DESC LIMIT 5;

-- expect: allow | join: revenue of German customers
SELECT c.country, sum(o.total) FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.country = 'DE' GROUP BY c.country;

-- expect: allow | join: pending orders of enterprise customers
SELECT o.id, o.total FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.plan = 'enterprise' AND o.status = 'pending';

-- expect: allow | join: customers without refunds (NOT EXISTS)
SELECT c.id FROM customers c
WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id AND o.status = 'refunded')
LIMIT 10;

-- expect: allow | join: latest order per customer through LEFT JOIN LATERAL
SELECT c.id, o.total
FROM customers c
LEFT JOIN LATERAL (SELECT total FROM orders WHERE customer_id = c.id ORDER BY created_at DESC LIMIT 1) o ON true
WHERE c.id < 10;

-- expect: allow | join: CTE of last order dates joined to untagged customer columns
WITH recent AS (
    SELECT customer_id, max(created_at) AS last_order FROM orders GROUP BY customer_id
)
SELECT c.id, c.plan, r.last_order
FROM customers c JOIN recent r ON r.customer_id = c.id
WHERE c.country = 'US'
ORDER BY r.last_order DESC
LIMIT 10;

-- expect: allow | join: INTERSECT over untagged columns
SELECT customer_id FROM orders INTERSECT SELECT id FROM customers WHERE plan = 'pro';

-- expect: allow | join: UNION of two order lists
SELECT id FROM orders WHERE status = 'pending' UNION SELECT id FROM orders WHERE status = 'shipped';

-- expect: allow | join: crm.notes untagged columns filtered by a customer's country
SELECT n.id, n.author FROM crm.notes n JOIN customers c ON c.id = n.customer_id WHERE c.country = 'FR';

-- expect: allow | view: the untagged order_summary view
SELECT * FROM order_summary WHERE customer_id = 1;

-- expect: allow | view: top customers by total from order_summary
SELECT customer_id, n FROM order_summary ORDER BY total DESC LIMIT 10;

-- expect: allow | write-orders: INSERT ... RETURNING id
INSERT INTO orders (customer_id, total, status, created_at) VALUES (1, 19.99, 'pending', now()) RETURNING id;

-- expect: allow | write-orders: multi-row INSERT returning generated columns
INSERT INTO orders (customer_id, total, status) VALUES (1, 5.00, 'pending'), (2, 7.50, 'pending') RETURNING id, created_at;

-- expect: allow | write-orders: INSERT ... RETURNING * of the untagged orders
INSERT INTO orders (customer_id, total, status) VALUES (3, 12.00, 'pending') RETURNING *;

-- expect: allow | write-orders: UPDATE status WHERE id
UPDATE orders SET status = 'shipped' WHERE id = 1;

-- expect: allow | write-orders: UPDATE two columns WHERE id with RETURNING
UPDATE orders SET status = 'cancelled', total = 0 WHERE id = 2 RETURNING id, status;

-- expect: allow | write-orders: DELETE WHERE id
DELETE FROM orders WHERE id = -1;

-- expect: allow | write-orders: DELETE with a range predicate and RETURNING
DELETE FROM orders WHERE status = 'cancelled' AND created_at < '2020-01-01' RETURNING id;

-- expect: allow | write-orders: upsert on the primary key
INSERT INTO orders (id, customer_id, total, status) VALUES (1, 1, 10.00, 'pending')
ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, total = EXCLUDED.total;

-- expect: allow | write-orders: INSERT ... SELECT choosing customers by untagged columns
INSERT INTO orders (customer_id, total, status)
SELECT id, 0, 'pending' FROM customers WHERE country = 'SE' AND plan = 'enterprise';

-- expect: allow | write-orders: nextval of the orders sequence
SELECT nextval('orders_id_seq');

-- expect: allow | write-orders: MERGE (PostgreSQL 15) into the untagged orders keyed on id
MERGE INTO orders o
USING (VALUES (1, 'shipped')) AS v(id, status)
ON o.id = v.id
WHEN MATCHED THEN UPDATE SET status = v.status
WHEN NOT MATCHED THEN DO NOTHING;

-- expect: allow | write-customers: new customer with untagged columns only
INSERT INTO customers (country, plan, created_at) VALUES ('DE', 'free', now()) RETURNING id;

-- expect: allow | write-crm: untagged crm.notes.author updated by id
UPDATE crm.notes SET author = 'bob' WHERE id = 1;

-- expect: allow | read-crm: untagged crm.notes columns
SELECT id, customer_id, author FROM crm.notes WHERE customer_id = 38 AND author = 'alice';

-- expect: allow | read-crm: untagged "AuditLog".action of a quoted mixed-case table
SELECT id, action FROM "AuditLog" WHERE action = 'login';

-- expect: allow | copy-in: COPY FROM STDIN into the untagged orders
COPY orders (customer_id, total, status) FROM STDIN;

-- expect: allow | copy-in: COPY FROM STDIN as CSV into orders
COPY orders (customer_id, total, status, created_at) FROM STDIN WITH (FORMAT csv, HEADER true);

-- expect: allow | copy-in: COPY FROM STDIN into untagged customers columns only
COPY customers (country, plan) FROM STDIN;

-- expect: allow | transaction: BEGIN
BEGIN;

-- expect: allow | transaction: COMMIT
COMMIT;

-- expect: allow | transaction: ROLLBACK
ROLLBACK;

-- expect: allow | transaction: ABORT
ABORT;

-- expect: allow | transaction: BEGIN, untagged update, COMMIT [no-tx]
BEGIN; UPDATE orders SET status = 'delivered' WHERE id = -3; COMMIT;

-- expect: allow | transaction: START TRANSACTION ISOLATION LEVEL SERIALIZABLE [no-tx]
START TRANSACTION ISOLATION LEVEL SERIALIZABLE; SELECT sum(total) FROM orders; COMMIT;

-- expect: allow | transaction: read-only repeatable-read transaction ended with END [no-tx]
BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SELECT count(*) FROM orders; END;

-- expect: allow | transaction: SET TRANSACTION READ ONLY
SET TRANSACTION READ ONLY;

-- expect: allow | transaction: SET TRANSACTION ISOLATION LEVEL
SET TRANSACTION ISOLATION LEVEL READ COMMITTED;

-- expect: allow | transaction: SAVEPOINT, ROLLBACK TO, RELEASE
SAVEPOINT s1;
UPDATE orders SET status = 'pending' WHERE id = 4;
ROLLBACK TO SAVEPOINT s1;
RELEASE SAVEPOINT s1;

-- expect: allow | transaction: advisory transaction lock
SELECT pg_try_advisory_xact_lock(42);

-- expect: allow | session: SET statement_timeout
SET statement_timeout = '5s';

-- expect: allow | session: SET application_name
SET application_name TO 'billing-agent';

-- expect: allow | session: SET TIME ZONE
SET TIME ZONE 'UTC';

-- expect: allow | session: SET TimeZone (mixed-case setting name)
SET TimeZone = 'Europe/Berlin';

-- expect: allow | session: SET search_path TO public
SET search_path TO public;

-- expect: allow | session: SET LOCAL lock_timeout
SET LOCAL lock_timeout = '2s';

-- expect: allow | session: SET SESSION ... TO DEFAULT
SET SESSION statement_timeout TO DEFAULT;

-- expect: allow | session: driver start-up settings in one query string
SET client_encoding TO 'UTF8'; SET datestyle TO 'ISO, MDY'; SET extra_float_digits = 3;

-- expect: allow | session: SHOW statement_timeout
SHOW statement_timeout;

-- expect: allow | session: SHOW server_version
SHOW server_version;

-- expect: allow | session: SHOW transaction_isolation
SHOW transaction_isolation;

-- expect: allow | session: SHOW standard_conforming_strings (SQLAlchemy on connect)
SHOW standard_conforming_strings;

-- expect: allow | session: RESET statement_timeout
RESET statement_timeout;

-- expect: allow | session: RESET ALL (does not touch role or session authorization)
RESET ALL;

-- expect: allow | session: set_config of an application setting (row-level-security tenant pattern)
SELECT set_config('app.tenant_id', '42', true);

-- expect: allow | session: LISTEN
LISTEN order_events;

-- expect: allow | session: NOTIFY with a payload
NOTIFY order_events, 'order 1 shipped';

-- expect: allow | session: pg_notify
SELECT pg_notify('order_events', 'order 2 shipped');

-- expect: allow | session: UNLISTEN a channel and UNLISTEN *
UNLISTEN order_events; UNLISTEN *;

-- expect: allow | session: DISCARD ALL (pool reset; cannot run in a transaction block) [no-tx]
DISCARD ALL;

-- expect: allow | session: DISCARD PLANS, SEQUENCES, TEMP
DISCARD PLANS; DISCARD SEQUENCES; DISCARD TEMP;

-- expect: allow | session: asyncpg's connection reset query
SELECT pg_advisory_unlock_all();
CLOSE ALL;
UNLISTEN *;
RESET ALL;

-- expect: allow | prepared: DEALLOCATE ALL
DEALLOCATE ALL;

-- expect: allow | prepared: PREPARE, EXECUTE and DEALLOCATE of an orders read
PREPARE order_status(int) AS SELECT status FROM orders WHERE id = $1;
EXECUTE order_status(1);
DEALLOCATE order_status;

-- expect: allow | prepared: cursor over orders in its own transaction [no-tx]
BEGIN;
DECLARE order_cur CURSOR FOR SELECT id, total FROM orders WHERE status = 'pending';
FETCH 100 FROM order_cur;
CLOSE order_cur;
COMMIT;

-- expect: allow | explain: EXPLAIN of an orders query
EXPLAIN SELECT * FROM orders WHERE customer_id = 1;

-- expect: allow | explain: EXPLAIN (FORMAT JSON) of a join on untagged columns
EXPLAIN (FORMAT JSON) SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.country = 'DE';

-- expect: allow | explain: EXPLAIN VERBOSE of an untagged query
EXPLAIN VERBOSE SELECT count(*) FROM customers WHERE plan = 'pro';

-- expect: allow | explain: EXPLAIN without ANALYZE of a query naming email (plans it, reads no values)
EXPLAIN (COSTS OFF) SELECT email FROM customers WHERE id = 1;

-- expect: allow | explain: EXPLAIN ANALYZE of an untagged read (executes, touches nothing tagged)
EXPLAIN ANALYZE SELECT count(*) FROM orders WHERE status = 'pending';

-- expect: allow | literal: 'email' as a string literal
SELECT 'email' AS label;

-- expect: allow | literal: 'ssn' compared with an untagged column
SELECT id FROM orders WHERE status = 'ssn';

-- expect: allow | literal: dollar-quoted column names are literals
SELECT $$email$$ AS label, $t$ssn$t$ AS other;

-- expect: allow | literal: a literal holding a whole risky statement
SELECT 'SELECT ssn FROM customers' AS example_query;

-- expect: allow | literal: regular-expression match on a literal that looks like an email
SELECT 'a@example.com' ~ '^[^@]+@[^@]+$' AS looks_like_email;

-- expect: allow | literal: NOTIFY payload mentioning tagged names
NOTIFY audit, 'customer email and phone updated';

-- expect: allow | literal: VALUES column aliased email
SELECT v.email FROM (VALUES ('nobody@example.com')) AS v(email);

-- expect: allow | alias: country aliased as email (reads country)
SELECT country AS email FROM customers WHERE id = 1;

-- expect: allow | alias: id aliased as email
SELECT id AS email FROM customers LIMIT 1;

-- expect: allow | alias: ORDER BY a bare name picks the output alias (country), not customers.email
SELECT country AS email FROM customers ORDER BY email LIMIT 5;

-- expect: allow | alias: derived table exposes id under the name email
SELECT email FROM (SELECT id AS email FROM customers) s LIMIT 1;

-- expect: allow | alias: column-alias list renames orders.customer_id to email
SELECT x.email FROM orders AS x(id, email) WHERE x.id = 1;

-- expect: allow | alias: a CTE named customers shadows the table and reads orders
WITH customers AS (SELECT id FROM orders) SELECT * FROM customers LIMIT 5;

-- expect: allow | alias: orders aliased as customers (reads orders.status)
SELECT customers.status FROM orders AS customers WHERE customers.id = 1;

-- expect: allow | comment: tagged name inside a block comment
SELECT id /* email */ FROM customers WHERE id = 1;

-- expect: allow | comment: tagged column commented out with a line comment
SELECT id -- , email
FROM customers WHERE id = 1;

-- expect: allow | comment: ", email" sits inside a nested block comment
SELECT id /* /* */ , email */ FROM customers WHERE id = 1;

-- expect: allow | orm: SQLAlchemy-style labelled columns
SELECT customers.id AS customers_id, customers.plan AS customers_plan
FROM customers
WHERE customers.id = 1;

-- expect: allow | orm: Django-style quoted columns with LIMIT 21
SELECT "orders"."id", "orders"."customer_id", "orders"."total", "orders"."status", "orders"."created_at"
FROM "orders"
WHERE "orders"."id" = 1
LIMIT 21;

-- expect: allow | orm: Django-style count
SELECT COUNT(*) AS "__count" FROM "orders" WHERE "orders"."status" = 'pending';

-- expect: allow | orm: ActiveRecord-style "orders".*
SELECT "orders".* FROM "orders" WHERE "orders"."customer_id" = 1 ORDER BY "orders"."id" ASC LIMIT 1;

-- expect: allow | orm: ActiveRecord-style existence check
SELECT 1 AS one FROM "customers" WHERE "customers"."id" = 1 LIMIT 1;

-- expect: allow | orm: Django-style UPDATE with quoted names
UPDATE "orders" SET "status" = 'shipped' WHERE "orders"."id" = 3;

-- expect: allow | orm: SQLAlchemy INSERT ... RETURNING with quoted names
INSERT INTO "orders" ("customer_id", "total", "status") VALUES (5, 42.00, 'pending') RETURNING "orders"."id";

-- expect: allow | orm: asyncpg copy_records_to_table's column probe
SELECT "customer_id", "total", "status" FROM "public"."orders" LIMIT 1;

-- expect: allow | metadata: pg_type lookup by name
SELECT t.oid, typname FROM pg_type t WHERE typname = ANY (ARRAY['int4', 'text', 'numeric']);

-- expect: allow | metadata: psycopg-style TypeInfo query
SELECT typname AS name, oid, typarray AS array_oid, oid::regtype::text AS regtype, typdelim AS delimiter
FROM pg_type t
WHERE t.oid = to_regtype('numeric')
ORDER BY t.oid;

-- expect: allow | metadata: hstore / geometry availability check (psycopg2 extras)
SELECT oid, typname FROM pg_type WHERE typname IN ('hstore', 'geometry');

-- expect: allow | metadata: asyncpg's type introspection query
WITH RECURSIVE typeinfo_tree(
    oid, ns, name, kind, basetype, elemtype, elemdelim,
    range_subtype, attrtypoids, attrnames, depth)
AS (
    SELECT
        ti.oid, ti.ns, ti.name, ti.kind, ti.basetype,
        ti.elemtype, ti.elemdelim, ti.range_subtype,
        ti.attrtypoids, ti.attrnames, 0
    FROM
            (
        SELECT
            t.oid                           AS oid,
            ns.nspname                      AS ns,
            t.typname                       AS name,
            t.typtype                       AS kind,
            (CASE WHEN t.typtype = 'd' THEN
                (WITH RECURSIVE typebases(oid, depth) AS (
                    SELECT
                        t2.typbasetype      AS oid,
                        0                   AS depth
                    FROM
                        pg_type t2
                    WHERE
                        t2.oid = t.oid

                    UNION ALL

                    SELECT
                        t2.typbasetype      AS oid,
                        tb.depth + 1        AS depth
                    FROM
                        pg_type t2,
                        typebases tb
                    WHERE
                       tb.oid = t2.oid
                       AND t2.typbasetype != 0
               ) SELECT oid FROM typebases ORDER BY depth DESC LIMIT 1)

               ELSE NULL
            END)                            AS basetype,
            t.typelem                       AS elemtype,
            elem_t.typdelim                 AS elemdelim,
            COALESCE(
                range_t.rngsubtype,
                multirange_t.rngsubtype)    AS range_subtype,
            (CASE WHEN t.typtype = 'c' THEN
                (SELECT
                    array_agg(ia.atttypid ORDER BY ia.attnum)
                FROM
                    pg_attribute ia
                    INNER JOIN pg_class c
                        ON (ia.attrelid = c.oid)
                WHERE
                    ia.attnum > 0 AND NOT ia.attisdropped
                    AND c.reltype = t.oid)

                ELSE NULL
            END)                            AS attrtypoids,
            (CASE WHEN t.typtype = 'c' THEN
                (SELECT
                    array_agg(ia.attname::text ORDER BY ia.attnum)
                FROM
                    pg_attribute ia
                    INNER JOIN pg_class c
                        ON (ia.attrelid = c.oid)
                WHERE
                    ia.attnum > 0 AND NOT ia.attisdropped
                    AND c.reltype = t.oid)

                ELSE NULL
            END)                            AS attrnames
        FROM
            pg_catalog.pg_type AS t
            INNER JOIN pg_catalog.pg_namespace ns ON (
                ns.oid = t.typnamespace)
            LEFT JOIN pg_type elem_t ON (
                t.typlen = -1 AND
                t.typelem != 0 AND
                t.typelem = elem_t.oid
            )
            LEFT JOIN pg_range range_t ON (
                t.oid = range_t.rngtypid
            )
            LEFT JOIN pg_range multirange_t ON (
                t.oid = multirange_t.rngmultitypid
            )
    )
 AS ti
    WHERE
        ti.oid = any('{25,23,1700,1184}'::oid[])

    UNION ALL

    SELECT
        ti.oid, ti.ns, ti.name, ti.kind, ti.basetype,
        ti.elemtype, ti.elemdelim, ti.range_subtype,
        ti.attrtypoids, ti.attrnames, tt.depth + 1
    FROM
            (
        SELECT
            t.oid                           AS oid,
            ns.nspname                      AS ns,
            t.typname                       AS name,
            t.typtype                       AS kind,
            (CASE WHEN t.typtype = 'd' THEN
                (WITH RECURSIVE typebases(oid, depth) AS (
                    SELECT
                        t2.typbasetype      AS oid,
                        0                   AS depth
                    FROM
                        pg_type t2
                    WHERE
                        t2.oid = t.oid

                    UNION ALL

                    SELECT
                        t2.typbasetype      AS oid,
                        tb.depth + 1        AS depth
                    FROM
                        pg_type t2,
                        typebases tb
                    WHERE
                       tb.oid = t2.oid
                       AND t2.typbasetype != 0
               ) SELECT oid FROM typebases ORDER BY depth DESC LIMIT 1)

               ELSE NULL
            END)                            AS basetype,
            t.typelem                       AS elemtype,
            elem_t.typdelim                 AS elemdelim,
            COALESCE(
                range_t.rngsubtype,
                multirange_t.rngsubtype)    AS range_subtype,
            (CASE WHEN t.typtype = 'c' THEN
                (SELECT
                    array_agg(ia.atttypid ORDER BY ia.attnum)
                FROM
                    pg_attribute ia
                    INNER JOIN pg_class c
                        ON (ia.attrelid = c.oid)
                WHERE
                    ia.attnum > 0 AND NOT ia.attisdropped
                    AND c.reltype = t.oid)

                ELSE NULL
            END)                            AS attrtypoids,
            (CASE WHEN t.typtype = 'c' THEN
                (SELECT
                    array_agg(ia.attname::text ORDER BY ia.attnum)
                FROM
                    pg_attribute ia
                    INNER JOIN pg_class c
                        ON (ia.attrelid = c.oid)
                WHERE
                    ia.attnum > 0 AND NOT ia.attisdropped
                    AND c.reltype = t.oid)

                ELSE NULL
            END)                            AS attrnames
        FROM
            pg_catalog.pg_type AS t
            INNER JOIN pg_catalog.pg_namespace ns ON (
                ns.oid = t.typnamespace)
            LEFT JOIN pg_type elem_t ON (
                t.typlen = -1 AND
                t.typelem != 0 AND
                t.typelem = elem_t.oid
            )
            LEFT JOIN pg_range range_t ON (
                t.oid = range_t.rngtypid
            )
            LEFT JOIN pg_range multirange_t ON (
                t.oid = multirange_t.rngmultitypid
            )
    )
 ti,
        typeinfo_tree tt
    WHERE
        (tt.elemtype IS NOT NULL AND ti.oid = tt.elemtype)
        OR (tt.attrtypoids IS NOT NULL AND ti.oid = any(tt.attrtypoids))
        OR (tt.range_subtype IS NOT NULL AND ti.oid = tt.range_subtype)
        OR (tt.basetype IS NOT NULL AND ti.oid = tt.basetype)
)

SELECT DISTINCT
    *,
    basetype::regtype::text AS basetype_name,
    elemtype::regtype::text AS elemtype_name,
    range_subtype::regtype::text AS range_subtype_name
FROM
    typeinfo_tree
ORDER BY
    depth DESC;

-- expect: allow | metadata: JDBC-style array type check
SELECT typinput = 'pg_catalog.array_in'::regproc, typtype
FROM pg_catalog.pg_type
LEFT JOIN (SELECT ns.oid AS nspoid, ns.nspname, r.r
           FROM pg_namespace AS ns
           JOIN (SELECT s.r, (current_schemas(false))[s.r] AS nspname
                 FROM generate_series(1, array_upper(current_schemas(false), 1)) AS s(r)) AS r
           USING (nspname)) AS sp
  ON sp.nspoid = typnamespace
WHERE typname = '_int4'
ORDER BY sp.r, pg_type.oid DESC
LIMIT 1;

-- expect: allow | metadata: schema names
SELECT nspname FROM pg_namespace ORDER BY nspname;

-- expect: allow | metadata: SQLAlchemy has_table check
SELECT pg_catalog.pg_class.relname
FROM pg_catalog.pg_class
JOIN pg_catalog.pg_namespace ON pg_catalog.pg_namespace.oid = pg_catalog.pg_class.relnamespace
WHERE pg_catalog.pg_class.relname = 'orders'
  AND pg_catalog.pg_class.relkind = ANY (ARRAY['r', 'p', 'f', 'v', 'm'])
  AND pg_catalog.pg_table_is_visible(pg_catalog.pg_class.oid)
  AND pg_catalog.pg_namespace.nspname != 'pg_catalog';

-- expect: allow | metadata: information_schema.tables of public
SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name;

-- expect: allow | metadata: column names and types of customers (metadata, not values)
SELECT column_name, data_type, is_nullable
FROM information_schema.columns
WHERE table_schema = 'public' AND table_name = 'customers'
ORDER BY ordinal_position;

-- expect: allow | metadata: primary key columns through pg_index and pg_attribute
SELECT a.attname
FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
WHERE i.indrelid = 'orders'::regclass AND i.indisprimary;

-- expect: allow | metadata: the current role's attributes from pg_roles (password shown as ********)
SELECT rolname, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user;

-- expect: allow | metadata: privilege check function
SELECT has_table_privilege('orders', 'SELECT');

-- expect: allow | prepare-execute: PREPARE of a PII read runs nothing (EXECUTE is judged when it runs)
PREPARE get_email_later(int) AS SELECT email FROM customers WHERE id = $1;

-- expect: allow | cursor: DECLARE CURSOR over email runs nothing (FETCH and MOVE are judged when they run)
DECLARE c_email_later CURSOR FOR SELECT email FROM customers;

-- expect: allow | prepare-execute: EXECUTE of a name that does not exist: the server refuses it [runtime-error]
EXECUTE not_prepared_here(1);

-- expect: allow | false-hold: UNION of order ids with ORDER BY the output column
SELECT id FROM orders UNION SELECT id FROM orders ORDER BY id;

-- expect: allow | false-hold: UNION ALL ordered by an output column named like an input column
SELECT id, status FROM orders WHERE id < 5 UNION ALL SELECT id, status FROM orders WHERE id > 4990 ORDER BY status, id;

-- expect: allow | false-hold: parenthesised EXCEPT ordered by position
(SELECT customer_id FROM orders) EXCEPT (SELECT id FROM customers WHERE plan = 'free') ORDER BY 1 LIMIT 10;

-- expect: allow | false-hold: FOR UPDATE OF o locks only orders rows, customers is filtered on id only
SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.status = 'paid' FOR UPDATE OF o;

-- expect: allow | false-hold: FOR NO KEY UPDATE OF o SKIP LOCKED with an untagged customers filter
SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.plan = 'pro' ORDER BY o.id LIMIT 10 FOR NO KEY UPDATE OF o SKIP LOCKED;

-- expect: allow | false-hold: FOR SHARE OF orders NOWAIT
SELECT orders.id, orders.total FROM orders WHERE orders.id = 1 FOR SHARE OF orders NOWAIT;

-- expect: allow | false-hold: ORDER BY status USING <
SELECT id FROM orders ORDER BY status USING < LIMIT 10;

-- expect: allow | false-hold: ORDER BY total USING >, id USING <
SELECT id, total FROM orders ORDER BY total USING >, id USING < LIMIT 10;

-- expect: allow | false-hold: ORDER BY customer_id USING > on a customers join filtered by country
SELECT o.customer_id FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.country = 'DE' ORDER BY o.customer_id USING > LIMIT 5;

-- expect: allow | false-hold: WITH RECURSIVE whose first CTE reads a later one
WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT 1 AS x) SELECT * FROM a;

-- expect: allow | false-hold: WITH RECURSIVE forward reference to a CTE over order ids
WITH RECURSIVE a AS (SELECT x + 1 AS y FROM b), b AS (SELECT id AS x FROM orders WHERE id < 3) SELECT y FROM a;

-- expect: allow | false-hold: a recursive CTE seeded from a later CTE over untagged customers columns
WITH RECURSIVE t(n) AS (SELECT n FROM seed UNION ALL SELECT n + 1 FROM t WHERE n < 5),
     seed(n) AS (SELECT min(id) FROM customers WHERE country = 'DE')
SELECT n FROM t;

-- expect: allow | false-hold: count over customers NATURAL JOIN orders (join columns id and created_at are untagged)
SELECT count(*) FROM customers NATURAL JOIN orders;

-- expect: allow | false-hold: untagged columns of customers NATURAL JOIN orders
SELECT c.id, o.total FROM customers c NATURAL JOIN orders o;

-- expect: allow | false-hold: the merged join columns of a NATURAL LEFT JOIN
SELECT id, created_at FROM customers NATURAL LEFT JOIN orders LIMIT 5;

-- expect: allow | false-hold: JOIN ... USING (id) AS u exposes only the join column id
SELECT u.* FROM customers JOIN orders USING (id) AS u LIMIT 5;

-- expect: allow | false-hold: count over a USING join on the untagged id
SELECT count(*) FROM customers JOIN orders USING (id) WHERE status = 'pending';

-- expect: allow | false-hold: EXPLAIN (ANALYZE false) does not execute
EXPLAIN (ANALYZE false) SELECT id FROM orders;

-- expect: allow | false-hold: EXPLAIN (ANALYZE off, FORMAT YAML) of a query naming email plans it only
EXPLAIN (ANALYZE off, FORMAT YAML) SELECT email FROM customers WHERE id = 1;

-- expect: allow | false-hold: EXPLAIN (ANALYZE 0, COSTS false) of an untagged count
EXPLAIN (ANALYZE 0, COSTS false) SELECT count(*) FROM orders WHERE status = 'pending';

-- expect: allow | sequence: last_value of orders_id_seq
SELECT last_value FROM orders_id_seq;

-- expect: allow | sequence: last_value and is_called of customers_id_seq
SELECT last_value, is_called FROM customers_id_seq;

-- expect: allow | sequence: SELECT * of a sequence
SELECT * FROM orders_id_seq;

-- expect: allow | sequence: schema-qualified sequence of crm.notes
SELECT last_value, log_cnt FROM crm.notes_id_seq;

-- expect: allow | sequence: nextval then currval in one select list
SELECT nextval('orders_id_seq'), currval('orders_id_seq');

-- expect: allow | sequence: nextval of customers_id_seq as regclass, then currval in a second statement
SELECT nextval('public.customers_id_seq'::regclass); SELECT currval('customers_id_seq');

-- expect: allow | sequence: pg_sequence_last_value
SELECT pg_sequence_last_value('orders_id_seq'::regclass);

-- expect: allow | sequence: pg_sequences view
SELECT sequencename, last_value, increment_by FROM pg_sequences WHERE schemaname = 'public';

-- expect: allow | statistics-health: null_frac, avg_width, n_distinct of customers
SELECT null_frac, avg_width, n_distinct FROM pg_stats WHERE tablename = 'customers';

-- expect: allow | statistics-health: correlation per column of public
SELECT attname, correlation FROM pg_stats WHERE schemaname = 'public';

-- expect: allow | statistics-health: schema-qualified pg_catalog.pg_stats, no filter
SELECT tablename, attname, null_frac FROM pg_catalog.pg_stats;

-- expect: allow | statistics-health: most_common_freqs are frequencies, not values
SELECT attname, most_common_freqs FROM pg_stats WHERE tablename = 'customers' AND attname = 'email';

-- expect: allow | statistics-health: aliased pg_stats, ordered by a health column
SELECT s.attname, s.inherited, s.n_distinct FROM pg_stats AS s WHERE s.tablename = 'customers' ORDER BY s.null_frac DESC, s.attname;

-- expect: allow | statistics-health: count of analysed columns
SELECT count(*) FROM pg_stats WHERE schemaname = 'crm';

-- expect: allow | statistics-health: extended statistics objects, names and kinds only
SELECT statistics_schemaname, statistics_name, attnames, kinds FROM pg_stats_ext;

-- expect: allow | lexing-setting: SET standard_conforming_strings = on
SET standard_conforming_strings = on;

-- expect: allow | lexing-setting: SET LOCAL standard_conforming_strings TO true
SET LOCAL standard_conforming_strings TO true;

-- expect: allow | lexing-setting: set_config('standard_conforming_strings', 'on', true)
SELECT set_config('standard_conforming_strings', 'on', true);

-- expect: allow | lexing-setting: current_setting('standard_conforming_strings')
SELECT current_setting('standard_conforming_strings');

-- expect: allow | lexing-setting: SET client_encoding TO 'UTF8'
SET client_encoding TO 'UTF8';

-- expect: allow | lexing-setting: SET LOCAL client_encoding = 'UTF8'
SET LOCAL client_encoding = 'UTF8';

-- expect: allow | lexing-setting: SHOW client_encoding
SHOW client_encoding;

-- expect: allow | lexing-setting: RESET client_encoding
RESET client_encoding;

-- expect: allow | lexing-setting: LATIN1 (single-byte) for one statement, then back to UTF8
SET client_encoding = 'LATIN1'; SELECT 1; SET client_encoding = 'UTF8';

-- expect: allow | lexing-setting: EUC_JP (every multibyte byte is >= 0x80), then RESET
SET client_encoding = 'EUC_JP'; SELECT 1; RESET client_encoding;

-- expect: allow | lexing-setting: set_config('client_encoding', 'UTF8', true)
SELECT set_config('client_encoding', 'UTF8', true);

-- expect: allow | alias-list: join alias list j(a, b) over orders: a is orders.id
SELECT j.a FROM (orders CROSS JOIN (SELECT 1) x) AS j(a, b);

-- expect: allow | alias-list: join alias list j(a) over customers: a is customers.id
SELECT j.a FROM (customers CROSS JOIN (SELECT 1) x) AS j(a) LIMIT 1;

-- expect: allow | alias-list: generate_series AS t(x)
SELECT t.x FROM generate_series(1, 3) AS t(x);

-- expect: allow | alias-list: VALUES AS v(a, b)
SELECT v.a FROM (VALUES (1, 'a')) AS v(a, b);

-- expect: allow | alias-list: CTE column list t(a) over order ids
WITH t(a) AS (SELECT id FROM orders) SELECT a FROM t;

-- expect: allow | alias-list: customers AS c(n): n is customers.id
SELECT c.n FROM customers AS c(n);

-- expect: allow | alias-list: orders AS o(x, y, z) renames id, customer_id, total
SELECT o.x FROM orders AS o(x, y, z) WHERE o.y = 1;

-- expect: allow | alias-list: USING (created_at) puts created_at first, so b is customers.id (not name)
SELECT j.b FROM (customers JOIN orders USING (created_at)) AS j(a, b) LIMIT 1;

-- expect: allow | alias-list: NATURAL JOIN alias list j(a, b) is id and created_at (not name)
SELECT j.a, j.b FROM (customers NATURAL JOIN orders) AS j(a, b) LIMIT 1;

-- expect: allow | alias-list: ROWS FROM alias list
SELECT t.a, t.b FROM ROWS FROM (generate_series(1, 3), unnest(ARRAY['x', 'y'])) AS t(a, b);

-- expect: allow | alias-list: unnest WITH ORDINALITY alias list
SELECT u.v, u.n FROM unnest(ARRAY[10, 20]) WITH ORDINALITY AS u(v, n);

-- expect: allow | alias-list: alias list on the untagged view order_summary
SELECT s.cid FROM order_summary AS s(cid, cnt) ORDER BY s.cnt DESC LIMIT 3;

-- expect: allow | alias-list: "AuditLog" AS a(k): k is id, not "Email"
SELECT a.k FROM "AuditLog" AS a(k) LIMIT 1;

-- expect: allow | alias-list: crm.notes AS n(i, c): id and customer_id only
SELECT n.i, n.c FROM crm.notes AS n(i, c) WHERE n.c = 38;

-- expect: allow | false-hold: DISTINCT ON a bare name picks the output column (country AS email), like ORDER BY
SELECT DISTINCT ON (email) country AS email FROM customers ORDER BY email;

-- expect: allow | false-hold: UNION ordered by an output column with DESC and a limit
SELECT id FROM orders UNION SELECT customer_id FROM orders ORDER BY id DESC LIMIT 3;

-- expect: allow | false-hold: RESET ROLE returns to the login role: privileges can only shrink
RESET ROLE;

-- expect: allow | false-hold: SET role TO DEFAULT is RESET ROLE
SET role TO DEFAULT;

-- expect: allow | false-hold: SET SESSION AUTHORIZATION DEFAULT returns to the login role
SET SESSION AUTHORIZATION DEFAULT;

-- expect: allow | false-hold: RESET SESSION AUTHORIZATION returns to the login role
RESET SESSION AUTHORIZATION;

-- expect: allow | explain: EXPLAIN of a select list with tagged columns filtered on an untagged one
EXPLAIN SELECT name, email FROM customers WHERE country = 'DE';

-- expect: allow | monitoring: sessions by state, without their statements
SELECT pid, state, wait_event_type, wait_event FROM pg_stat_activity;

-- expect: allow | monitoring: active session count
SELECT count(*) FROM pg_stat_activity WHERE state = 'active';

-- expect: allow | monitoring: prepared statement names and times
SELECT name, prepare_time FROM pg_prepared_statements;

-- expect: allow | function-lineage: a SQL function whose body reads nothing tagged
SELECT order_total(1);

-- expect: allow | function-lineage: the same function over a column, in WHERE
SELECT id FROM customers WHERE order_total(id) > 100 ORDER BY id LIMIT 3;

-- expect: allow | function-lineage: schema-qualified, in FROM
SELECT * FROM public.order_total(2);
