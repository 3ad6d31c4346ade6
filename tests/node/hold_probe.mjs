// What a node-postgres (`pg`) program sees of a statement pgproxy holds:
//
//   node hold_probe.mjs CONNECTION_STRING SQL PARAMS_JSON [--listen-notices]
//
// It connects, runs SQL once with the parameters (an array; none: `[]`) and prints one JSON object per
// line on stdout:
//   {"notice": {"severity": …, "code": …, "message": …}}   each `notice` event (only with --listen-notices)
//   {"rows": [{column: value, …}, …]}                      the result
//   {"error": {"code": …, "message": …}}                   the error the query's promise rejected with
import pg from 'pg';

const [connectionString, sql, params, flag] = process.argv.slice(2);
const client = new pg.Client({ connectionString });
if (flag === '--listen-notices') {
  client.on('notice', (notice) => {
    const { severity, code, message } = notice;
    console.log(JSON.stringify({ notice: { severity, code, message } }));
  });
}
await client.connect();
try {
  const result = await client.query(sql, JSON.parse(params));
  console.log(JSON.stringify({ rows: result.rows }));
} catch (err) {
  console.log(JSON.stringify({ error: { code: err.code, message: err.message } }));
} finally {
  await client.end();
}
