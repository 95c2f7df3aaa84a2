-- Fills and cancels update an order's status and amounts. The partial index of open orders
-- had `status` in its predicate, which made every such update a non-HOT one: a new entry in
-- every index of the table. The engine knows each account's open orders (it serves that
-- list), so the index goes; with free room in each page (fillfactor) the updates stay HOT.
-- ADR 0012.
DROP INDEX IF EXISTS orders_open_by_account;
ALTER TABLE orders SET (fillfactor = 80);
