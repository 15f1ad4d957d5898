-- A small shop: what a real application keeps in PostgreSQL.
CREATE SCHEMA IF NOT EXISTS shop;
CREATE TYPE shop.order_status AS ENUM ('new', 'paid', 'shipped', 'cancelled');
CREATE DOMAIN shop.email AS text CHECK (VALUE ~ '^[^@]+@[^@]+$');
CREATE TABLE shop.customers (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  email shop.email NOT NULL UNIQUE,
  name text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE shop.products (
  id serial PRIMARY KEY,
  sku text NOT NULL UNIQUE,
  title text NOT NULL,
  price_cents integer NOT NULL CHECK (price_cents >= 0),
  tags text[] NOT NULL DEFAULT '{}',
  attributes jsonb NOT NULL DEFAULT '{}');
CREATE TABLE shop.orders (
  id bigserial PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES shop.customers(id),
  status shop.order_status NOT NULL DEFAULT 'new',
  total_cents integer NOT NULL,
  placed_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE shop.order_lines (
  order_id bigint NOT NULL REFERENCES shop.orders(id) ON DELETE CASCADE,
  line integer NOT NULL,
  product_id integer NOT NULL REFERENCES shop.products(id),
  quantity integer NOT NULL CHECK (quantity > 0),
  PRIMARY KEY (order_id, line));
CREATE INDEX ON shop.orders (customer_id, placed_at);
CREATE VIEW shop.revenue_by_day AS
  SELECT date_trunc('day', placed_at) AS day, sum(total_cents) AS cents
  FROM shop.orders WHERE status <> 'cancelled' GROUP BY 1;

INSERT INTO shop.customers (email, name)
  SELECT 'c' || g || '@example.com', 'Customer ' || g FROM generate_series(1, 2000) g;
INSERT INTO shop.products (sku, title, price_cents, tags, attributes)
  SELECT 'SKU-' || g, 'Product ' || g, 100 + g * 7 % 9000, ARRAY['tag' || g % 5],
         jsonb_build_object('weight_g', g * 3, 'color', (ARRAY['red','green','blue'])[1 + g % 3])
  FROM generate_series(1, 500) g;
INSERT INTO shop.orders (customer_id, status, total_cents, placed_at)
  SELECT 1 + g % 2000, (ARRAY['new','paid','shipped','cancelled']::shop.order_status[])[1 + g % 4],
         1000 + g % 50000, now() - (g || ' minutes')::interval
  FROM generate_series(1, 20000) g;
INSERT INTO shop.order_lines (order_id, line, product_id, quantity)
  SELECT o, l, 1 + (o * l) % 500, 1 + (o + l) % 3 FROM generate_series(1, 20000) o, generate_series(1, 3) l;
