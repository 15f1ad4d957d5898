"""Warm planner statistics at cutover: logical replication copies rows, not pg_statistic, so
before the target is ready for cutover pgshift ANALYZEs every table there (partitioned tables at
their root, materialized views after their refresh, extended statistics objects with them).
Autovacuum is off on the target, so only pgshift can have made the statistics found."""
import pytest

from conftest import sql


SCHEMA = """
CREATE TABLE public.orders (id bigint PRIMARY KEY, customer int NOT NULL, city text NOT NULL,
                            zip text NOT NULL);
INSERT INTO public.orders SELECT g, g % 500, 'city' || (g % 50), 'zip' || (g % 50)
  FROM generate_series(1, 50000) g;
CREATE STATISTICS orders_city_zip (dependencies, ndistinct) ON city, zip FROM public.orders;
CREATE TABLE public.events (id bigint NOT NULL, at date NOT NULL, body text,
                            PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE public.events_2025 PARTITION OF public.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE public.events_2026 PARTITION OF public.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO public.events SELECT g, date '2025-06-01' + (g % 400), 'e' || g FROM generate_series(1, 20000) g;
CREATE MATERIALIZED VIEW public.orders_per_city AS SELECT city, count(*) AS n FROM public.orders GROUP BY city;
"""


@pytest.mark.parametrize("src_version,dst_version", [(13, 18), (18, 13)])
def test_every_table_has_statistics_on_the_target_before_cutover(lab, src_version, dst_version):
    src = lab.start(f"st{src_version}-src", src_version)
    dst = lab.start(f"st{src_version}-dst", dst_version)
    sql(dst, "ALTER SYSTEM SET autovacuum = off")
    sql(dst, "SELECT pg_reload_conf()")
    sql(src, SCHEMA)
    check = lab.run("check", "--source", src, "--target", dst)
    assert "statistics" in check.stdout and "ANALYZEd on the target" in check.stdout, check.stdout
    state = lab.dir / f"st{src_version}-state"
    up = lab.run("upgrade", "--source", src, "--target", dst, "--state", str(state),
                 "--router", "manual", "--cutover", "manual", timeout=600)
    assert "tables analyzed on the target in" in up.stderr, up.stderr[-3000:]
    assert "phase ReadyForCutover" in up.stdout or "ReadyForCutover" in up.stderr

    def analyzed(rel):
        return int(sql(dst, f"SELECT count(*) FROM pg_statistic WHERE starelid = '{rel}'::regclass"))
    for rel in ("public.orders", "public.events_2025", "public.events_2026", "public.orders_per_city"):
        assert analyzed(rel) > 0, f"{rel} has no statistics on the target"
    # The partitioned root: statistics of the whole hierarchy (stainherit).
    assert int(sql(dst, "SELECT count(*) FROM pg_statistic WHERE starelid = 'public.events'::regclass "
                        "AND stainherit")) > 0
    # The extended statistics object was built, not only created.
    built = ("SELECT count(*) FROM pg_statistic_ext e JOIN pg_statistic_ext_data d ON d.stxoid = e.oid "
             "WHERE e.stxname = 'orders_city_zip' AND d.stxddependencies IS NOT NULL")
    assert sql(dst, built) == "1"
    status = lab.run("status", "--state", str(state)).stdout
    assert "statistics: 3 tables analyzed on the target" in status, status
    lab.run("abort", "--state", str(state))
