// What a pgjdbc program sees of a statement pgproxy holds: run as a single-file source program,
//
//   java -cp /usr/share/java/postgresql.jar HoldProbe.java URL USER PASSWORD SQL [INT]
//
// It connects, runs SQL once as a PreparedStatement (INT, if given, bound with setInt: pgjdbc sends it
// in binary), and prints one JSON object per line on stdout:
//   {"rows": [["v1", …], …]}                        the result, each value as getString gives it
//   {"warnings": [{"sqlstate": …, "message": …}]}   the statement's SQLWarnings (notices), after it ran
//   {"error": {"sqlstate": …, "message": …, "class": …}}   the SQLException, if it failed
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.SQLWarning;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

public class HoldProbe {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        try (Connection conn = DriverManager.getConnection(args[0], props);
             PreparedStatement statement = conn.prepareStatement(args[3])) {
            if (args.length > 4) {
                statement.setInt(1, Integer.parseInt(args[4]));
            }
            try {
                List<String> rows = new ArrayList<>();
                try (ResultSet result = statement.executeQuery()) {
                    int columns = result.getMetaData().getColumnCount();
                    while (result.next()) {
                        List<String> row = new ArrayList<>();
                        for (int i = 1; i <= columns; i++) {
                            row.add(json(result.getString(i)));
                        }
                        rows.add("[" + String.join(", ", row) + "]");
                    }
                }
                System.out.println("{\"rows\": [" + String.join(", ", rows) + "]}");
            } catch (SQLException e) {
                System.out.println("{\"error\": " + error(e) + "}");
            }
            List<String> warnings = new ArrayList<>();
            for (SQLWarning w = statement.getWarnings(); w != null; w = w.getNextWarning()) {
                warnings.add("{\"sqlstate\": " + json(w.getSQLState()) + ", \"message\": " + json(w.getMessage()) + "}");
            }
            System.out.println("{\"warnings\": [" + String.join(", ", warnings) + "]}");
        } catch (SQLException e) {  // connecting failed
            System.out.println("{\"error\": " + error(e) + "}");
            System.exit(1);
        }
    }

    static String error(SQLException e) {
        return "{\"sqlstate\": " + json(e.getSQLState()) + ", \"message\": " + json(e.getMessage())
            + ", \"class\": " + json(e.getClass().getName()) + "}";
    }

    static String json(String s) {
        if (s == null) {
            return "null";
        }
        StringBuilder out = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"': out.append("\\\""); break;
                case '\\': out.append("\\\\"); break;
                case '\n': out.append("\\n"); break;
                case '\r': out.append("\\r"); break;
                case '\t': out.append("\\t"); break;
                default:
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
            }
        }
        return out.append('"').toString();
    }
}
