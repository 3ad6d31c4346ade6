-- pgproxy demo data: the customers/orders/support_tickets schema that DESIGN.md describes, shared by
-- `pgproxy demo`, the tests, the examples and the benchmarks.
--
-- Every value is synthetic and derived from generate_series (no random()), so each load
-- gives the same content. Loading again replaces the tables. Phone numbers use the
-- fictional 555-01xx range and SSNs the 9xx range that is never issued.
-- Plain SQL only (no psql meta-commands), so any client can run it as one script.

SET client_min_messages = warning;

BEGIN;

DROP TABLE IF EXISTS support_tickets;
DROP TABLE IF EXISTS orders;
DROP TABLE IF EXISTS customers;

CREATE TABLE customers (
    id serial PRIMARY KEY,
    name text,
    email text,
    phone text,
    ssn text,
    country text,
    plan text,
    created_at timestamptz
);

CREATE TABLE orders (
    id serial PRIMARY KEY,
    customer_id int REFERENCES customers,
    total numeric(10,2),
    status text,
    created_at timestamptz
);

-- Free-text support tickets. Nobody tagged them, yet some quote an email address or a phone
-- number (DESIGN.md: the PII `pgproxy scan` has to find).
CREATE TABLE support_tickets (
    id serial PRIMARY KEY,
    customer_id int REFERENCES customers,
    body text,
    status text
);

-- 1,000 customers from 24 first and 20 last names (480 distinct pairs, so some share a
-- name, as real people do); the email carries i, so it is unique.
INSERT INTO customers (id, name, email, phone, ssn, country, plan, created_at)
SELECT
    i,
    first || ' ' || last,
    lower(first) || '.' || lower(last) || i || '@example.com',
    '+1-' || (ARRAY['202', '212', '312', '415', '503', '617', '702', '808'])[i % 8 + 1]
        || '-555-01' || lpad((i % 100)::text, 2, '0'),
    '9' || lpad((i * 37 % 100)::text, 2, '0')
        || '-' || lpad((i % 89 + 10)::text, 2, '0')
        || '-' || lpad(i::text, 4, '0'),
    (ARRAY['US', 'US', 'US', 'CA', 'GB', 'DE', 'FR', 'NL', 'SE', 'ES', 'AU', 'JP', 'BR', 'IN'])
        [i % 14 + 1],
    CASE WHEN i % 10 < 6 THEN 'free' WHEN i % 10 < 9 THEN 'pro' ELSE 'enterprise' END,
    timestamptz '2023-01-01 00:00:00+00' + i * interval '10 hours 31 minutes 7 seconds'
FROM generate_series(1, 1000) AS i,
LATERAL (
    SELECT
        (ARRAY['Ada', 'Alan', 'Barbara', 'Carlos', 'Chen', 'Dana', 'Emma', 'Farid',
               'Grace', 'Hiro', 'Ines', 'Jonas', 'Kemal', 'Lena', 'Maya', 'Noah',
               'Olga', 'Priya', 'Quinn', 'Rosa', 'Sam', 'Tariq', 'Uma', 'Yusuf'])[i % 24 + 1]
            AS first,
        (ARRAY['Anderson', 'Brown', 'Costa', 'Dubois', 'Evans', 'Fischer', 'Garcia',
               'Hansen', 'Ito', 'Jensen', 'Kowalski', 'Lopez', 'Martin', 'Nakamura',
               'Okafor', 'Patel', 'Rossi', 'Schmidt', 'Tanaka', 'Weber'])[(i / 24 + i * 7) % 20 + 1]
            AS last
) AS names
ORDER BY i;

-- 5,000 orders. 7919 is prime to 1000, so every customer gets exactly five; each order
-- is placed 0 to 364 days after its customer signed up.
INSERT INTO orders (id, customer_id, total, status, created_at)
SELECT
    o,
    cid,
    ((o * 7919 % 49900) + 100) / 100.0 + (o % 3) * 100,
    CASE
        WHEN o % 20 = 0 THEN 'refunded'
        WHEN o % 20 = 1 THEN 'cancelled'
        WHEN o % 20 < 5 THEN 'pending'
        WHEN o % 20 < 9 THEN 'shipped'
        ELSE 'delivered'
    END,
    timestamptz '2023-01-01 00:00:00+00' + cid * interval '10 hours 31 minutes 7 seconds'
        + (o * 13 % 365) * interval '1 day' + (o % 1440) * interval '1 minute'
FROM generate_series(1, 5000) AS o,
LATERAL (SELECT o * 7919 % 1000 + 1 AS cid) AS c
ORDER BY o;

-- 300 tickets: every 7th quotes an email address, every 11th a phone number (both
-- synthetic: example.net and the fictional 555-01xx range), the rest neither.
INSERT INTO support_tickets (id, customer_id, body, status)
SELECT
    t,
    t * 433 % 1000 + 1,
    (ARRAY['My order arrived damaged', 'I was charged twice for order ' || (t * 31 % 5000 + 1),
           'How do I change my plan?', 'The export button does nothing',
           'Please cancel my subscription', 'Invoice ' || (20230000 + t) || ' has the wrong address'])[t % 6 + 1]
        || CASE
               WHEN t % 7 = 0 THEN '. You can reach me at user' || t || '@example.net.'
               WHEN t % 11 = 0 THEN '. Call me back on (415) 555-01' || lpad((t % 100)::text, 2, '0') || ', please.'
               ELSE '.'
           END,
    (ARRAY['open', 'open', 'pending', 'closed'])[t % 4 + 1]
FROM generate_series(1, 300) AS t
ORDER BY t;

-- The ids were given explicitly: new rows continue after them.
ALTER SEQUENCE customers_id_seq RESTART WITH 1001;
ALTER SEQUENCE orders_id_seq RESTART WITH 5001;
ALTER SEQUENCE support_tickets_id_seq RESTART WITH 301;

COMMIT;

ANALYZE customers;
ANALYZE orders;
ANALYZE support_tickets;
