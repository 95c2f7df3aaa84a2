-- A client_order_id is unique per account (API.md); an order without one needs no entry in the
-- index that enforces it. Most orders have none, and each entry was work in every batch's COPY.
ALTER TABLE orders DROP CONSTRAINT unique_client_order_id;
CREATE UNIQUE INDEX orders_by_client_order_id ON orders (account_id, client_order_id)
    WHERE client_order_id IS NOT NULL;
