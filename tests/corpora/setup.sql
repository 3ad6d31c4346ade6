-- Extra objects the policy corpora (tests/corpora/risky.sql, benign.sql) use, on top of
-- the demo data. Run it as the owner of the demo tables, in database `app`, after
-- pgproxy/demo/data.sql. Idempotent: running it again gives the same objects and rows.
-- Plain SQL only (no psql meta-commands).
--
-- Tags (the catalog file says so): crm.notes.body is pii; "AuditLog"."Email" is pii;
-- the view customer_contacts exposes customers.name and customers.email, so it is tagged;
-- order_summary exposes nothing tagged. order_count() and archive_orders() are NOT
-- allow-listed and run dynamic SQL (EXECUTE): calling them runs code the proxy cannot see.
-- order_total() and contact_of() are plain SQL and PL/pgSQL: calling them counts what their
-- bodies read (nothing tagged; customers.email), and so does reading order_contacts, a view
-- over contact_of().
--
-- Note: the views depend on customers and orders, so reloading data.sql (which drops
-- those tables) needs `DROP VIEW IF EXISTS customer_contacts, order_summary, order_contacts` first.

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

-- A user function and a procedure that are not allow-listed, with bodies pgproxy cannot read.
CREATE OR REPLACE FUNCTION public.order_count(cid int) RETURNS bigint
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE n bigint;
BEGIN
    EXECUTE 'SELECT count(*) FROM public.orders WHERE customer_id = $1' INTO n USING cid;
    RETURN n;
END
$$;

CREATE OR REPLACE PROCEDURE public.archive_orders()
    LANGUAGE plpgsql
    AS $$
BEGIN
    -- Harmless: only counts what an archiving job would move.
    EXECUTE 'SELECT count(*) FROM public.orders WHERE status = $1 AND created_at < now() - interval ''10 years'''
        USING 'cancelled';
END
$$;

-- Functions whose bodies pgproxy reads: what they read is what calling them reads.
CREATE OR REPLACE FUNCTION public.order_total(cid int) RETURNS numeric
    LANGUAGE sql STABLE
    AS $$ SELECT coalesce(sum(total), 0) FROM public.orders WHERE customer_id = cid $$;

CREATE OR REPLACE FUNCTION public.contact_of(cid int) RETURNS text
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE found_email text;
BEGIN
    SELECT c.email INTO found_email FROM public.customers c WHERE c.id = cid;
    RETURN found_email;
END
$$;

CREATE OR REPLACE VIEW public.order_contacts AS
    SELECT o.id, o.status, public.contact_of(o.customer_id) AS contact FROM public.orders o;

COMMIT;

ANALYZE crm.notes;
ANALYZE public."AuditLog";
