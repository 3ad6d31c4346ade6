-- Seeds for the expression-slot injection test (tests/injection.py): grammar the policy corpora
-- do not show (window frames, XMLTABLE, SQL/JSON, the odd clauses of DML and DDL), over untagged
-- columns. Each block of lines separated by a blank line is one case, mutated like a corpus case.
-- There is no expected action: only what the analysis sees in each mutant is judged.

SELECT id, sum(total) OVER (PARTITION BY status ORDER BY id ROWS BETWEEN 1 PRECEDING AND 2 FOLLOWING) FROM orders

SELECT id, count(*) OVER w FROM orders WINDOW w AS (ORDER BY created_at RANGE BETWEEN '1 day'::interval PRECEDING AND CURRENT ROW)

SELECT id, lag(total, 1, 0) OVER (ORDER BY id GROUPS BETWEEN CURRENT ROW AND 1 FOLLOWING EXCLUDE TIES) FROM orders

SELECT x.* FROM XMLTABLE(XMLNAMESPACES('http://example.com/a' AS a), '/a:rows/a:row' PASSING xml '<rows xmlns="http://example.com/a"><row id="1"/></rows>' COLUMNS id int PATH '@id', note text PATH 'a:note' DEFAULT 'none', n FOR ORDINALITY) AS x

SELECT x.* FROM XMLTABLE('/rows/row' PASSING BY REF xmlparse(document '<rows><row id="1"/></rows>') COLUMNS id int PATH '@id' NOT NULL) AS x

SELECT xmlelement(name o, xmlattributes(id AS id), status), xmlforest(status, total AS t), xmlpi(name php, 'echo'), xmlroot(xmlelement(name a), version '1.0', standalone yes), xmlconcat(xmlelement(name a), xmlelement(name b)), xmlserialize(content xmlelement(name a) AS text), xmlexists('/a' PASSING BY VALUE xml '<a/>'), xml '<a/>' IS DOCUMENT FROM orders

SELECT xmlagg(xmlelement(name s, status) ORDER BY id) FROM orders

SELECT jt.* FROM JSON_TABLE('[{"a":1,"c":[1]}]'::jsonb, '$[*]' PASSING 1 AS v COLUMNS (a int PATH '$.a' DEFAULT 0 ON EMPTY, b text FORMAT JSON PATH '$.b', NESTED PATH '$.c[*]' COLUMNS (c int PATH '$'))) AS jt

SELECT JSON_OBJECT('id': id, 'status': status RETURNING jsonb), JSON_ARRAY(id, total), JSON_ARRAY(SELECT id FROM orders), JSON_VALUE('{"a":1}'::jsonb, '$.a' RETURNING int DEFAULT 0 ON ERROR), JSON_QUERY('{"a":[1]}'::jsonb, '$.a' WITH WRAPPER), JSON_EXISTS('{"a":1}'::jsonb, '$.a ? (@ > $x)' PASSING id AS x), status IS JSON OBJECT FROM orders

SELECT JSON_OBJECTAGG(status : total), JSON_ARRAYAGG(id ORDER BY id), JSON(status), JSON_SCALAR(total), JSON_SERIALIZE('{"a":1}'::json RETURNING text) FROM orders GROUP BY status

SELECT (ARRAY[id, customer_id])[1], (ARRAY[1, 2, 3])[1:2], ('{1,2}'::int[])[id:], ROW(id, status), (ROW(id, status)) IS NULL, ARRAY(SELECT 1), (SELECT max(total) FROM orders) FROM orders

SELECT CASE status WHEN 'new' THEN 1 WHEN 'paid' THEN 2 ELSE 3 END, CASE WHEN total > 10 THEN 'big' END, coalesce(total, 0), nullif(status, 'x'), greatest(id, 1), least(id, 2) FROM orders

SELECT status, percentile_cont(0.5) WITHIN GROUP (ORDER BY total), count(*) FILTER (WHERE total > 1), string_agg(status, ',' ORDER BY id), GROUPING(status) FROM orders GROUP BY GROUPING SETS ((status), ()), CUBE (customer_id), ROLLUP (created_at) HAVING count(*) > 1

SELECT id FROM orders WHERE total BETWEEN SYMMETRIC 1 AND 2 AND status IS DISTINCT FROM 'x' AND status SIMILAR TO 'a%' ESCAPE '!' AND status ILIKE 'a%' AND (created_at, created_at) OVERLAPS (now(), now()) AND created_at AT TIME ZONE 'UTC' > now() AND status COLLATE "C" < 'z' AND id = ANY (ARRAY[1, 2]) AND id IN (1, 2) AND total IS NOT NULL AND (status = 'a') IS NOT TRUE AND EXISTS (SELECT 1) AND id > ALL (SELECT 1) AND (id, total) IN ((1, 2)) AND status NOT IN (SELECT status FROM orders)

SELECT substring(status FROM 1 FOR 2), trim(BOTH 'x' FROM status), position('a' IN status), overlay(status PLACING 'x' FROM 1 FOR 1), extract(year FROM created_at), cast(total AS text), total::int, status IS NFC NORMALIZED, normalize(status, NFC), COLLATION FOR (status), current_date, current_timestamp(2), localtime, current_user, current_schema, 'a' || status, -total, id % 2, @ total, status ~ 'a', id::text::int, created_at + interval '1' day FROM orders

SELECT id FROM orders ORDER BY total USING > NULLS LAST OFFSET 1 ROWS FETCH FIRST 2 ROWS WITH TIES

SELECT DISTINCT ON (customer_id) customer_id, total FROM orders ORDER BY customer_id, total DESC LIMIT ALL

SELECT g.n, r.a, l.m FROM generate_series(1, 10) WITH ORDINALITY AS g(n, o), ROWS FROM (generate_series(1, 2), unnest(ARRAY[1])) AS r(a, b), LATERAL (SELECT g.n + 1 AS m) AS l

SELECT * FROM ROWS FROM (json_to_record('{"a":1}') AS (a int)) AS j

SELECT o.id FROM orders o JOIN orders p USING (id) AS j LEFT JOIN LATERAL (SELECT o.total) t ON o.id > 1 FULL JOIN orders o2 ON o2.id = o.id + 1 CROSS JOIN (VALUES (1), (2)) AS v(x)

WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 5) SEARCH DEPTH FIRST BY n SET ord CYCLE n SET is_cycle USING path SELECT n FROM t

WITH m AS MATERIALIZED (SELECT id, total FROM orders WHERE total > 1) SELECT id FROM m WHERE id IN (SELECT id FROM m)

SELECT status FROM orders UNION SELECT plan FROM customers INTERSECT SELECT country FROM customers ORDER BY 1 LIMIT 3 OFFSET 1

VALUES (1, 'a'), (2, 'b') ORDER BY 1 LIMIT 1

SELECT id FROM orders WHERE id = $1 AND status = $2

SELECT id FROM orders o TABLESAMPLE BERNOULLI (5) REPEATABLE (42)

SELECT id FROM orders FOR UPDATE OF orders SKIP LOCKED

SELECT id INTO TEMP scratch_ids FROM orders WHERE total > 1

INSERT INTO orders (customer_id, total, status) VALUES (1, DEFAULT, 'new'), (2, 3.5, 'paid') ON CONFLICT (id) WHERE total > 0 DO UPDATE SET total = excluded.total + 1, status = 'x' WHERE orders.id > 0 RETURNING id, total * 2

INSERT INTO orders AS o (customer_id, total) OVERRIDING USER VALUE SELECT id, 1 FROM customers WHERE country = 'DE' ON CONFLICT ON CONSTRAINT orders_pkey DO NOTHING

WITH n AS (INSERT INTO orders (customer_id, total) VALUES (1, 2) RETURNING id) SELECT id FROM n

UPDATE orders SET (total, status) = (SELECT 1, 'x'), customer_id = DEFAULT FROM customers c WHERE c.id = orders.customer_id AND c.country = 'DE' RETURNING orders.id

UPDATE orders o SET total = o.total + 1, status = upper(o.status) WHERE o.id = 1

DELETE FROM orders USING customers c WHERE c.id = orders.customer_id AND c.plan = 'free' RETURNING orders.id

MERGE INTO orders o USING (SELECT id, plan FROM customers) c ON o.customer_id = c.id WHEN MATCHED AND o.total > 1 THEN UPDATE SET total = o.total + 1 WHEN NOT MATCHED THEN INSERT (customer_id, total) VALUES (c.id, 1) WHEN NOT MATCHED BY SOURCE AND o.id > 1 THEN DELETE RETURNING o.id

COPY (SELECT id, total FROM orders WHERE total > 1 ORDER BY id LIMIT 5) TO STDOUT

COPY orders (id, total) FROM STDIN WHERE total > 0

EXPLAIN (ANALYZE, COSTS OFF) SELECT id FROM orders WHERE total > 1

EXPLAIN SELECT id FROM orders WHERE total > 1

EXPLAIN UPDATE orders SET total = 1 WHERE id = 1

PREPARE q(int) AS SELECT id FROM orders WHERE id = $1 AND total > 2; EXECUTE q(1 + 1)

DECLARE c CURSOR FOR SELECT id FROM orders WHERE total > 1

CREATE TEMP TABLE scratch AS SELECT id, total FROM orders WHERE total > 1

CREATE VIEW scratch_view AS SELECT id, total FROM orders WHERE total > 1

CREATE MATERIALIZED VIEW scratch_mv AS SELECT id, total FROM orders WHERE total > 1 WITH NO DATA

CREATE TABLE scratch (id int DEFAULT 1 CHECK (id > 0), total numeric GENERATED ALWAYS AS (id * 2) STORED, CONSTRAINT c CHECK (total > 0))

ALTER TABLE orders ADD COLUMN note text DEFAULT 'x', ALTER COLUMN total SET DEFAULT 0, ADD CONSTRAINT pos CHECK (total >= 0)

ALTER TABLE orders ALTER COLUMN total TYPE numeric USING total::numeric

CREATE INDEX ON orders ((total * 2)) WHERE status = 'new'

CREATE FUNCTION scratch_f(a int DEFAULT 1) RETURNS int LANGUAGE sql RETURN a + 1

CREATE FUNCTION scratch_g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END

CREATE DOMAIN scratch_pos AS int DEFAULT 1 CHECK (VALUE > 0)

CREATE TABLE scratch_p (id int, d date) PARTITION BY RANGE (d); CREATE TABLE scratch_p1 PARTITION OF scratch_p FOR VALUES FROM ('2020-01-01') TO ('2021-01-01')

CREATE STATISTICS scratch_s ON (total * 2), status FROM orders

CREATE RULE scratch_r AS ON UPDATE TO orders WHERE new.total > 0 DO ALSO NOTIFY scratch

CREATE POLICY scratch_p ON orders USING (total > 0) WITH CHECK (total > 0)

SET statement_timeout = 1000; SET LOCAL work_mem = '4MB'; SELECT set_config('application_name', 'x', false)

SELECT order_count(1 + 1), order_count(cid => 2)

CALL archive_orders()

CREATE RULE scratch_r2 AS ON INSERT TO orders DO ALSO (UPDATE orders SET total = new.total WHERE id = new.id; INSERT INTO orders (customer_id, total) VALUES (new.customer_id, 0))

CREATE TRIGGER scratch_t BEFORE UPDATE ON orders FOR EACH ROW WHEN (old.total IS DISTINCT FROM new.total) EXECUTE FUNCTION suppress_redundant_updates_trigger()
