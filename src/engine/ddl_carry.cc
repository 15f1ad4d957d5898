#include "engine/ddl_carry.h"

#include "common/strings.h"

namespace pgshift::engine {

// single_statement(q): q without its final semicolon when it holds one statement; NULL when
// it holds more (a script sent as one query string: running it again would run its DML too)
// or a quote does not close. Quotes, E'' escapes, quoted identifiers, comments (nested block
// comments too) and dollar quotes are skipped, so a semicolon inside them does not count.
//
// record_ddl(): temporary objects are not logged. A command pgshift can carry is one of the
// kinds below, sent as a statement of its own and starting with its own tag's words (DDL run
// from a function or a DO block is not: running the caller again would do more than the
// DDL). ADD COLUMN with a non-constant DEFAULT, serial or identity is not carried either
// (each server would compute the existing rows' values itself), nor a SECURITY DEFINER
// function. The objects the command made are listed with their owners (`objects`).
const char* const kDdlLogFunctionsSql = R"SQL(
CREATE OR REPLACE FUNCTION _pgshift.single_statement(q text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $f$
DECLARE
  n int := length(q);
  i int := 1;
  c text;
  d int;
  j int;
  tag text;
  esc boolean;
  stmt_end int := 0;
BEGIN
  WHILE i <= n LOOP
    c := substr(q, i, 1);
    IF stmt_end > 0 AND c !~ '[[:space:];]' AND substr(q, i, 2) NOT IN ('--', '/*') THEN
      RETURN NULL;
    END IF;
    IF c = '''' THEN
      esc := i > 1 AND upper(substr(q, i - 1, 1)) = 'E'
             AND (i = 2 OR substr(q, i - 2, 1) !~ '[[:alnum:]_$]');
      i := i + 1;
      LOOP
        IF i > n THEN RETURN NULL; END IF;
        c := substr(q, i, 1);
        IF esc AND c = '\' THEN
          i := i + 2;
        ELSIF c = '''' AND substr(q, i + 1, 1) = '''' THEN
          i := i + 2;
        ELSIF c = '''' THEN
          EXIT;
        ELSE
          i := i + 1;
        END IF;
      END LOOP;
      i := i + 1;
    ELSIF c = '"' THEN
      j := i + 1;
      LOOP
        d := strpos(substr(q, j), '"');
        IF d = 0 THEN RETURN NULL; END IF;
        j := j + d;
        EXIT WHEN substr(q, j, 1) <> '"';
        j := j + 1;
      END LOOP;
      i := j;
    ELSIF substr(q, i, 2) = '--' THEN
      d := strpos(substr(q, i), E'\n');
      IF d = 0 THEN i := n + 1; ELSE i := i + d; END IF;
    ELSIF substr(q, i, 2) = '/*' THEN
      d := 1;
      i := i + 2;
      WHILE d > 0 LOOP
        IF i > n THEN RETURN NULL; END IF;
        IF substr(q, i, 2) = '/*' THEN
          d := d + 1; i := i + 2;
        ELSIF substr(q, i, 2) = '*/' THEN
          d := d - 1; i := i + 2;
        ELSE
          i := i + 1;
        END IF;
      END LOOP;
    ELSIF c = '$' AND (i = 1 OR substr(q, i - 1, 1) !~ '[[:alnum:]_$]') THEN
      tag := substring(substr(q, i) FROM '^\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$');
      IF tag IS NULL THEN
        i := i + 1;
      ELSE
        d := strpos(substr(q, i + length(tag)), tag);
        IF d = 0 THEN RETURN NULL; END IF;
        i := i + 2 * length(tag) + d - 1;
      END IF;
    ELSE
      IF c = ';' AND stmt_end = 0 THEN stmt_end := i; END IF;
      i := i + 1;
    END IF;
  END LOOP;
  RETURN btrim(CASE WHEN stmt_end > 0 THEN substr(q, 1, stmt_end - 1) ELSE q END, E' \t\r\n');
END
$f$;

-- The event trigger runs as whoever ran the DDL: it only hands the command to record_ddl,
-- which may write the log (SECURITY DEFINER, its own search_path). The caller's search_path
-- is recorded: the statement is run with it on the target.
CREATE OR REPLACE FUNCTION _pgshift.log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF pg_catalog.current_setting('application_name', true) = 'pgshift' THEN
    RETURN;
  END IF;
  PERFORM _pgshift.record_ddl(tg_tag, pg_catalog.current_setting('search_path'));
END
$f$;

CREATE OR REPLACE FUNCTION _pgshift.record_ddl(tag text, path text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
  q text := current_query();
  verb text;
  stmt text;
  head text;
  why text;
  objs jsonb;
BEGIN
  -- Only from inside the DDL command itself (pg_event_trigger_ddl_commands raises elsewhere),
  -- with its own tag; temporary objects alone are not logged.
  IF tag = 'pgshift: carry from here' THEN
    RETURN;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands()) THEN
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() c WHERE c.command_tag = tag) THEN
      RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() c
                   WHERE c.schema_name IS NULL OR c.schema_name NOT LIKE 'pg\_temp%') THEN
      RETURN;
    END IF;
  END IF;
  verb := CASE tag
    WHEN 'ALTER TABLE' THEN 'ALTER\s+TABLE'
    WHEN 'CREATE TABLE' THEN 'CREATE\s+((GLOBAL|LOCAL)\s+)?((TEMP|TEMPORARY|UNLOGGED)\s+)?TABLE'
    WHEN 'DROP TABLE' THEN 'DROP\s+TABLE'
    WHEN 'CREATE INDEX' THEN 'CREATE\s+(UNIQUE\s+)?INDEX'
    WHEN 'ALTER INDEX' THEN 'ALTER\s+INDEX'
    WHEN 'DROP INDEX' THEN 'DROP\s+INDEX'
    WHEN 'CREATE SEQUENCE' THEN 'CREATE\s+((TEMP|TEMPORARY|UNLOGGED)\s+)?SEQUENCE'
    WHEN 'ALTER SEQUENCE' THEN 'ALTER\s+SEQUENCE'
    WHEN 'DROP SEQUENCE' THEN 'DROP\s+SEQUENCE'
    WHEN 'CREATE VIEW' THEN 'CREATE\s+(OR\s+REPLACE\s+)?((TEMP|TEMPORARY)\s+)?(RECURSIVE\s+)?VIEW'
    WHEN 'ALTER VIEW' THEN 'ALTER\s+VIEW'
    WHEN 'DROP VIEW' THEN 'DROP\s+VIEW'
    WHEN 'CREATE FUNCTION' THEN 'CREATE\s+(OR\s+REPLACE\s+)?FUNCTION'
    WHEN 'ALTER FUNCTION' THEN 'ALTER\s+FUNCTION'
    WHEN 'DROP FUNCTION' THEN 'DROP\s+FUNCTION'
    WHEN 'CREATE TRIGGER' THEN 'CREATE\s+(OR\s+REPLACE\s+)?(CONSTRAINT\s+)?TRIGGER'
    WHEN 'DROP TRIGGER' THEN 'DROP\s+TRIGGER'
    WHEN 'CREATE SCHEMA' THEN 'CREATE\s+SCHEMA'
    WHEN 'COMMENT' THEN 'COMMENT\s+ON'
    WHEN 'GRANT' THEN 'GRANT'
    WHEN 'REVOKE' THEN 'REVOKE'
  END;
  IF verb IS NULL THEN
    why := 'pgshift does not carry ' || tag;
  ELSIF length(q) > 100000 THEN
    why := 'its query string is longer than 100000 characters';
  ELSE
    stmt := _pgshift.single_statement(q);
    IF stmt IS NULL THEN
      why := 'it was sent in one query string with other statements';
    ELSE
      head := regexp_replace(stmt, '^(\s|--[^\n]*(\n|$)|/\*([^*]|\*+[^*/])*\*+/)*', '');
      IF head !~* ('^' || verb || '\M') THEN
        why := 'it ran inside another statement (a function or a DO block)';
      ELSIF tag = 'ALTER TABLE' AND head ~* '\m(ATTACH|DETACH)\s+PARTITION\M' THEN
        why := 'ATTACH and DETACH PARTITION change which tables are published';
      ELSIF head ~* '\mSECURITY\s+DEFINER\M' THEN
        why := 'a SECURITY DEFINER function runs as its owner, so pgshift leaves it to a person';
      ELSIF tag = 'ALTER TABLE' AND head ~* '\mADD\M' AND (
              head ~* '\m(small|big)?serial[248]?\M' OR head ~* '\mIDENTITY\M'
              OR EXISTS (SELECT 1 FROM regexp_matches(head,
                   '\mDEFAULT\s+(''(?:[^'']|'''')*''(?:\s*::\s*[[:alnum:]_ ]+)?|[-+]?[0-9][0-9.eE+-]*|true\M|false\M|null\M)?',
                   'gi') m WHERE m[1] IS NULL)) THEN
        why := 'it adds a column whose existing rows get values each server computes '
               'itself (a non-constant DEFAULT, serial or identity), so the two would differ';
      ELSE
        stmt := regexp_replace(head, '^((CREATE\s+(UNIQUE\s+)?|DROP\s+)INDEX)\s+CONCURRENTLY\M',
                               '\1', 'i');
      END IF;
    END IF;
  END IF;
  -- What the command made, and who owns it here: on the target the statement runs as the
  -- role replication applies with, and the owners are set in the same transaction. A
  -- sequence that belongs to a column follows its table.
  IF why IS NULL THEN
    SELECT jsonb_agg(jsonb_build_object('kind', upper(c.object_type), 'identity',
                                        c.object_identity, 'owner', o.owner))
      INTO objs
      FROM pg_event_trigger_ddl_commands() c
      CROSS JOIN LATERAL (SELECT pg_get_userbyid(CASE c.classid
          WHEN 'pg_class'::regclass THEN (SELECT relowner FROM pg_class WHERE oid = c.objid)
          WHEN 'pg_proc'::regclass THEN (SELECT proowner FROM pg_proc WHERE oid = c.objid)
          WHEN 'pg_namespace'::regclass THEN (SELECT nspowner FROM pg_namespace WHERE oid = c.objid)
        END) AS owner) o
     WHERE c.command_tag LIKE 'CREATE %'
       AND c.object_type IN ('table', 'sequence', 'view', 'materialized view', 'function',
                             'procedure', 'schema', 'foreign table')
       AND NOT (c.object_type = 'sequence' AND EXISTS (
         SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.objid
            AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')));
  END IF;
  INSERT INTO _pgshift.ddl_log (tag, command, role, search_path, statement, why_not, objects)
  VALUES (tag, q, session_user, path, CASE WHEN why IS NULL THEN stmt END, why, objs);
END
$f$;
GRANT USAGE ON SCHEMA _pgshift TO PUBLIC;
)SQL";

namespace {

// One query string: one implicit transaction. The target's trigger runs only in the apply worker (replica mode) and only from the carry
// row on; an error stops the apply with the statement and the way out (the apply worker
// retries, so the hand-made fix is picked up by itself).
constexpr const char* kTargetCarrySql = R"SQL(
CREATE SCHEMA IF NOT EXISTS _pgshift;
CREATE TABLE IF NOT EXISTS _pgshift.ddl_log (
  id bigint PRIMARY KEY,
  at timestamptz,
  tag text,
  command text,
  role text,
  search_path text,
  statement text,
  why_not text,
  objects jsonb,
  carried boolean NOT NULL DEFAULT false);
CREATE TABLE IF NOT EXISTS _pgshift.ddl_state (id int PRIMARY KEY, carrying boolean NOT NULL);
INSERT INTO _pgshift.ddl_state VALUES (1, false) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS _pgshift.ddl_applied (id bigint PRIMARY KEY);
CREATE OR REPLACE FUNCTION _pgshift.carry_ddl() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE
  saved text := current_setting('search_path');
  o record;
BEGIN
  IF NEW.tag = 'pgshift: carry from here' THEN
    UPDATE _pgshift.ddl_state SET carrying = true WHERE id = 1;
    RETURN NEW;
  END IF;
  IF current_setting('session_replication_role') <> 'replica' OR NEW.statement IS NULL
     OR NOT coalesce((SELECT carrying FROM _pgshift.ddl_state WHERE id = 1), false) THEN
    RETURN NEW;
  END IF;
  IF EXISTS (SELECT 1 FROM _pgshift.ddl_applied a WHERE a.id = NEW.id) THEN
    NEW.carried := true;
    RETURN NEW;
  END IF;
  PERFORM set_config('search_path', coalesce(NEW.search_path, saved), true);
  BEGIN
    EXECUTE NEW.statement;
    FOR o IN SELECT * FROM jsonb_to_recordset(coalesce(NEW.objects, '[]'))
                        AS x(kind text, identity text, owner text) LOOP
      EXECUTE format('ALTER %s %s OWNER TO %I', o.kind, o.identity, o.owner);
    END LOOP;
  EXCEPTION WHEN OTHERS THEN
    RAISE EXCEPTION 'pgshift could not run on the target the DDL the source ran (id % of _pgshift.ddl_log): %',
                    NEW.id, SQLERRM
      USING DETAIL = 'statement: ' || left(NEW.statement, 1000),
            HINT = 'make the target able to run it (a missing role or tablespace, say), or make '
                   'the same change on the target by hand and run INSERT INTO '
                   '_pgshift.ddl_applied VALUES (' || NEW.id || ') there; replication goes '
                   'on by itself';
  END;
  PERFORM set_config('search_path', saved, true);
  NEW.carried := true;
  RETURN NEW;
END
$f$;
DROP TRIGGER IF EXISTS carry_ddl ON _pgshift.ddl_log;
CREATE TRIGGER carry_ddl BEFORE INSERT ON _pgshift.ddl_log
  FOR EACH ROW EXECUTE FUNCTION _pgshift.carry_ddl();
ALTER TABLE _pgshift.ddl_log ENABLE ALWAYS TRIGGER carry_ddl;
)SQL";

}  // namespace

Status InstallDdlCarry(pg::Connection& target) { return target.Exec(kTargetCarrySql); }

Result<int64_t> CountDdlLog(pg::Connection& source, int64_t mark) {
  PGSHIFT_ASSIGN_OR_RETURN(std::string n,
                           source.QueryValue("SELECT count(*) FROM _pgshift.ddl_log WHERE id > $1 "
                                             "AND tag IS DISTINCT FROM $2",
                                             {std::to_string(mark), kCarryFromHereTag}));
  long long v = 0;
  if (!ParseInt64(n, &v)) return Status::Internal("unexpected DDL log count '" + n + "'");
  return static_cast<int64_t>(v);
}

}  // namespace pgshift::engine
