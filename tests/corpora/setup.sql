-- Extra objects the policy corpora (tests/corpora/risky.sql, benign.sql) use, on top of
-- the demo data. Run it as the owner of the demo tables, in database `app`, after
-- pgproxy/demo/data.sql. Idempotent: running it again gives the same objects and rows.
-- Plain SQL only (no psql meta-commands).
--
-- Tags (the catalog file says so): crm.notes.body is pii; "AuditLog"."Email" is pii;
-- the view customer_contacts exposes customers.name and customers.email, so it is tagged;
-- order_summary exposes nothing tagged. order_count() and archive_orders() are NOT
-- allow-listed: calling them runs code the proxy cannot see.
--
-- Note: the views depend on customers and orders, so reloading data.sql (which drops
-- those tables) needs `DROP VIEW IF EXISTS customer_contacts, order_summary` first.

SET client_min_messages = warning;

BEGIN;

CREATE SCHEMA IF NOT EXISTS crm;

DROP TABLE IF EXISTS crm.notes;
CREATE TABLE crm.notes (
    id serial PRIMARY KEY,
    customer_id int,
    body text,
    author text
);
INSERT INTO crm.notes (id, customer_id, body, author)
SELECT
    i,
    i * 37 % 1000 + 1,
    (ARRAY['Called about a refund', 'Asked to change billing email',
           'Prefers phone contact in the morning', 'Upgrade discussed, follow up next week'])
        [i % 4 + 1] || ' (note ' || i || ')',
    (ARRAY['alice', 'bob', 'carol'])[i % 3 + 1]
FROM generate_series(1, 50) AS i;
SELECT setval('crm.notes_id_seq', 50);

-- A mixed-case, quoted table name with a mixed-case, quoted column.
DROP TABLE IF EXISTS public."AuditLog";
CREATE TABLE public."AuditLog" (
    id int,
    "Email" text,
    action text
);
INSERT INTO public."AuditLog" (id, "Email", action)
SELECT i, 'user' || i || '@example.com', (ARRAY['login', 'logout', 'export'])[i % 3 + 1]
FROM generate_series(1, 20) AS i;

-- A view over tagged columns (tagged) and one over untagged columns only.
CREATE OR REPLACE VIEW public.customer_contacts AS
    SELECT id, name, email FROM public.customers;

CREATE OR REPLACE VIEW public.order_summary AS
    SELECT customer_id, count(*) AS n, sum(total) AS total
    FROM public.orders
    GROUP BY customer_id;

-- A user function and a procedure that are not allow-listed.
CREATE OR REPLACE FUNCTION public.order_count(cid int) RETURNS bigint
    LANGUAGE sql STABLE
    AS $$ SELECT count(*) FROM public.orders WHERE customer_id = cid $$;

CREATE OR REPLACE PROCEDURE public.archive_orders()
    LANGUAGE plpgsql
    AS $$
BEGIN
    -- Harmless: only counts what an archiving job would move.
    PERFORM count(*) FROM public.orders
    WHERE status = 'cancelled' AND created_at < now() - interval '10 years';
END
$$;

COMMIT;

ANALYZE crm.notes;
ANALYZE public."AuditLog";
