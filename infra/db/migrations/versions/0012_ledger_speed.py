"""Ledger speed: one round trip per posting (or per batch), sharded unlimited accounts.

``ledger_post_many`` opens missing accounts, locks the accounts that have a limit in
ascending id order, checks currencies and non-negative balances (in posting order), then
writes transactions, entries and cached balances, all in one call.  A refusal returns a
status row and writes nothing (accounts it opened are removed again), so the caller's
transaction stays usable, as before.  The checks mirror ``domain.ledger``: the values
they use (``allow_negative``, ``sharded``, the net per account) come from the domain as
parameters, and the Python side re-derives each refusal with the domain rule.

Accounts that may go negative without any limit (``world:``, ``adjustments:``) are
*sharded*: their cached balance is ``accounts.balance`` plus the sum of their
``account_shards`` rows.  A posting adds its delta to one shard it can lock without
waiting (``FOR UPDATE SKIP LOCKED``), so concurrent deposits no longer queue on one row;
their ``accounts`` row is never locked for update.  Accounts with a limit are never
sharded (CHECK) and keep their single cached balance and the non-negative CHECK.

Revision ID: 0012
Revises: 0006
"""

from alembic import op

revision = "0012"
down_revision = "0010"
branch_labels = None
depends_on = None

#: Shards per unlimited account: more than the concurrent postings one PostgreSQL
#: primary of this size runs, so a free shard is almost always found.
SHARDS = 16
#: Prefixes of the accounts that may go negative with no limit (domain.ledger's
#: UNLIMITED_PREFIXES at the time of this migration; literals, not imported).
UNLIMITED = ("world:", "adjustments:")


def upgrade() -> None:
    like = " OR ".join(f"code LIKE '{p}%'" for p in UNLIMITED)
    op.execute(
        f"""
        ALTER TABLE accounts ADD COLUMN sharded boolean NOT NULL DEFAULT false;
        ALTER TABLE accounts ADD CONSTRAINT accounts_sharded_only_unlimited
            CHECK (NOT sharded OR allow_negative);

        CREATE TABLE account_shards (
            account_id bigint NOT NULL REFERENCES accounts(id),
            shard smallint NOT NULL CHECK (shard >= 0 AND shard < {SHARDS}),
            balance bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (account_id, shard)
        ) WITH (fillfactor = 50);

        UPDATE accounts SET sharded = true WHERE allow_negative AND ({like});
        INSERT INTO account_shards (account_id, shard)
            SELECT a.id, s FROM accounts a, generate_series(0, {SHARDS - 1}) s WHERE a.sharded;

        -- The balance of every account: cached row plus its shards (none for most).
        CREATE VIEW account_balances AS
            SELECT a.id, a.code, a.currency, a.allow_negative, a.sharded,
                   a.balance + COALESCE((SELECT sum(s.balance) FROM account_shards s
                                         WHERE s.account_id = a.id), 0)::bigint AS balance
            FROM accounts a;

        -- Open the accounts of p_codes that do not exist (in code order); the ids opened.
        CREATE FUNCTION ledger_open_accounts(p_codes text[], p_curs text[], p_negs boolean[],
                                             p_sharded boolean[]) RETURNS bigint[]
        -- Generic plans: the statements are index lookups on codes and ids whatever the
        -- arrays hold; re-planning them on every call cost ~40% of a posting's server time.
        LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
        DECLARE
            v_created bigint[];
        BEGIN
            IF (SELECT count(*) FROM accounts WHERE code = ANY(p_codes))
               = cardinality(p_codes) THEN
                RETURN '{{}}';
            END IF;
            WITH ins AS (
                INSERT INTO accounts (code, currency, allow_negative, sharded)
                SELECT w.code, w.currency, w.neg, w.sharded
                FROM unnest(p_codes, p_curs, p_negs, p_sharded) AS w(code, currency, neg, sharded)
                WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.code = w.code)
                ORDER BY w.code
                ON CONFLICT (code) DO NOTHING
                RETURNING id, sharded
            ), shards AS (
                INSERT INTO account_shards (account_id, shard)
                SELECT ins.id, s FROM ins, generate_series(0, {SHARDS - 1}) s WHERE ins.sharded
            )
            SELECT COALESCE(array_agg(id), '{{}}') INTO v_created FROM ins;
            RETURN v_created;
        END;
        $fn$;

        -- Lock the accounts with a limit in ascending id order; read the sharded ones.
        CREATE FUNCTION ledger_lock_accounts(p_codes text[])
            RETURNS TABLE (id bigint, code text, currency text, allow_negative boolean,
                           sharded boolean, balance bigint)
        -- Generic plans: the statements are index lookups on codes and ids whatever the
        -- arrays hold; re-planning them on every call cost ~40% of a posting's server time.
        LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
        #variable_conflict use_column
        BEGIN
            PERFORM 1 FROM accounts a WHERE a.code = ANY(p_codes) AND NOT a.sharded
                ORDER BY a.id FOR UPDATE;
            RETURN QUERY SELECT b.id, b.code, b.currency, b.allow_negative, b.sharded, b.balance
                FROM account_balances b WHERE b.code = ANY(p_codes) ORDER BY b.id;
        END;
        $fn$;

        -- Post T balanced transactions at once (each already validated by domain.ledger).
        --   per transaction: p_keys, p_kinds, p_memos, p_metas, p_reverses
        --   per account (distinct, any order): p_codes, p_curs, p_negs, p_sharded
        --   per entry, in posting order: p_e_txn (1-based transaction index), p_e_codes,
        --   p_e_curs, p_e_amts
        -- status: 'posted' (ids = the new transaction ids, in order); 'existing' (idx/ids:
        -- the transactions whose idempotency key is already used; nothing written);
        -- 'currency' (code holds currency, not wanted); 'negative' (transaction idx would
        -- take code from balance by delta below zero).  Nothing is written unless 'posted'.
        CREATE FUNCTION ledger_post_many(
            p_keys text[], p_kinds text[], p_memos text[], p_metas jsonb[], p_reverses bigint[],
            p_codes text[], p_curs text[], p_negs boolean[], p_sharded boolean[],
            p_e_txn int[], p_e_codes text[], p_e_curs text[], p_e_amts bigint[],
            OUT status text, OUT ids bigint[], OUT idx int[], OUT code text,
            OUT allow_negative boolean, OUT balance bigint, OUT delta bigint,
            OUT currency text, OUT wanted text)
        -- Generic plans: the statements are index lookups on codes and ids whatever the
        -- arrays hold; re-planning them on every call cost ~40% of a posting's server time.
        LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
        #variable_conflict use_column
        DECLARE
            v_created bigint[];
            v_hot int;
            v_done bigint[];
            r record;
            v_pid int := pg_backend_pid();
        BEGIN
            IF array_remove(p_keys, NULL) <> '{{}}' THEN
                SELECT array_agg(k.ord::int ORDER BY k.ord), array_agg(t.id ORDER BY k.ord)
                    INTO idx, ids
                    FROM unnest(p_keys) WITH ORDINALITY AS k(key, ord)
                    JOIN ledger_transactions t ON t.idempotency_key = k.key;
                IF idx IS NOT NULL THEN
                    status := 'existing';
                    RETURN;
                END IF;
            END IF;

            -- Open first, lock after: never wait on another's new account while holding locks.
            IF (SELECT count(*) FROM accounts a WHERE a.code = ANY(p_codes))
               < cardinality(p_codes) THEN
                v_created := ledger_open_accounts(p_codes, p_curs, p_negs, p_sharded);
            END IF;

            -- One statement: lock the accounts with a limit (ascending id), then check the
            -- currencies and, on the locked rows' balances, every transaction after the
            -- ones before it, as if posted one by one.
            WITH locked AS MATERIALIZED (
                SELECT a.id, a.code, a.currency, a.allow_negative, a.balance FROM accounts a
                WHERE a.code = ANY(p_codes) AND NOT a.sharded ORDER BY a.id FOR UPDATE
            ), unlimited AS (
                SELECT a.id, a.code, a.currency FROM accounts a
                WHERE a.code = ANY(p_codes) AND a.sharded
            ), entry AS (
                SELECT * FROM unnest(p_e_txn, p_e_codes, p_e_curs, p_e_amts) WITH ORDINALITY
                    AS e(txn, code, cur, amt, ord)
            ), net AS (
                SELECT e.txn, e.code, sum(e.amt) AS d, min(e.ord) AS first
                FROM entry e GROUP BY e.txn, e.code
            ), wrong_currency AS (
                SELECT e.code, acc.currency, e.cur FROM entry e
                JOIN (SELECT code, currency FROM locked
                      UNION ALL SELECT code, currency FROM unlimited) acc ON acc.code = e.code
                WHERE acc.currency <> e.cur ORDER BY e.ord LIMIT 1
            ), negative AS (
                SELECT q.txn, q.code, q.allow_negative, q.before, q.d
                FROM (SELECT n.txn, n.code, n.first, n.d, l.allow_negative,
                             l.balance + sum(n.d) OVER (PARTITION BY n.code ORDER BY n.txn)
                                 - n.d AS before
                      FROM net n JOIN locked l ON l.code = n.code
                      WHERE NOT l.allow_negative) q
                WHERE q.before + q.d < 0
                ORDER BY q.txn, q.first LIMIT 1
            )
            SELECT (SELECT count(*) FROM locked) AS n_locked,
                   (SELECT count(*) FROM unlimited u
                    WHERE (SELECT sum(n.d) FROM net n WHERE n.code = u.code) <> 0) AS n_hot,
                   c.code AS c_code, c.currency AS c_held, c.cur AS c_wanted,
                   ng.txn AS n_txn, ng.code AS n_code, ng.allow_negative AS n_allow,
                   ng.before AS n_before, ng.d AS n_d
                INTO r
                FROM (SELECT 1) one
                LEFT JOIN wrong_currency c ON true
                LEFT JOIN negative ng ON true;
            v_hot := r.n_hot;
            IF r.c_code IS NOT NULL THEN
                status := 'currency'; code := r.c_code; currency := r.c_held;
                wanted := r.c_wanted;
            ELSIF r.n_code IS NOT NULL THEN
                status := 'negative'; idx := ARRAY[r.n_txn::int]; code := r.n_code;
                allow_negative := r.n_allow; balance := r.n_before; delta := r.n_d;
            END IF;
            IF status IS NOT NULL THEN  -- refused: leave nothing behind
                IF cardinality(v_created) > 0 THEN
                    DELETE FROM account_shards s WHERE s.account_id = ANY(v_created);
                    DELETE FROM accounts a WHERE a.id = ANY(v_created);
                END IF;
                RETURN;
            END IF;

            IF cardinality(p_kinds) = 1 THEN
                INSERT INTO ledger_transactions (idempotency_key, kind, memo, metadata, reverses_id)
                    VALUES (p_keys[1], p_kinds[1], p_memos[1], p_metas[1], p_reverses[1])
                    RETURNING ARRAY[id] INTO ids;
            ELSE
                ids := ARRAY(SELECT nextval('ledger_transactions_id_seq')
                             FROM generate_series(1, cardinality(p_kinds)));
                INSERT INTO ledger_transactions (id, idempotency_key, kind, memo, metadata,
                                                 reverses_id)
                    SELECT ids[t.ord], t.key, t.kind, t.memo, t.meta, t.rev
                    FROM unnest(p_keys, p_kinds, p_memos, p_metas, p_reverses) WITH ORDINALITY
                         AS t(key, kind, memo, meta, rev, ord)
                    ORDER BY t.ord;
            END IF;
            -- Entries, cached balances of the accounts with a limit (locked above) and one
            -- shard of each unlimited account, in one statement.  The shard is one that is
            -- free now (SKIP LOCKED: never a wait, so never part of a deadlock) ...
            WITH net AS (
                SELECT e.code, sum(e.amt) AS d
                FROM unnest(p_e_codes, p_e_amts) AS e(code, amt) GROUP BY e.code
            ), entries AS (
                INSERT INTO ledger_entries (transaction_id, account_id, currency, amount)
                SELECT ids[e.txn], a.id, e.cur, e.amt
                FROM unnest(p_e_txn, p_e_codes, p_e_curs, p_e_amts) WITH ORDINALITY
                     AS e(txn, code, cur, amt, ord)
                JOIN accounts a ON a.code = e.code
                ORDER BY e.ord
            ), limited AS (
                UPDATE accounts a SET balance = a.balance + n.d FROM net n
                WHERE a.code = n.code AND NOT a.sharded AND n.d <> 0
            ), hot AS (
                SELECT a.id, n.d,
                       (SELECT f.shard FROM account_shards f WHERE f.account_id = a.id
                        ORDER BY (f.shard + v_pid) % {SHARDS}
                        LIMIT 1 FOR UPDATE SKIP LOCKED) AS shard
                FROM net n JOIN accounts a ON a.code = n.code
                WHERE a.sharded AND n.d <> 0
            ), upd AS (
                UPDATE account_shards s SET balance = s.balance + hot.d FROM hot
                WHERE s.account_id = hot.id AND s.shard = hot.shard
                RETURNING s.account_id
            )
            SELECT array_agg(account_id) INTO v_done FROM upd;
            IF v_hot > 0 THEN
                -- ... and only when every shard is busy, wait for one, in ascending id.
                IF COALESCE(cardinality(v_done), 0) < v_hot THEN
                    FOR r IN SELECT a.id, n.d
                             FROM (SELECT e.code, sum(e.amt) AS d
                                   FROM unnest(p_e_codes, p_e_amts) AS e(code, amt)
                                   GROUP BY e.code) n
                             JOIN accounts a ON a.code = n.code
                             WHERE a.sharded AND n.d <> 0
                               AND a.id <> ALL(COALESCE(v_done, '{{}}'))
                             ORDER BY a.id
                    LOOP
                        UPDATE account_shards s SET balance = s.balance + r.d
                            WHERE s.account_id = r.id AND s.shard = v_pid % {SHARDS};
                        IF NOT FOUND THEN  -- an unlimited account without shards: its row
                            UPDATE accounts a SET balance = a.balance + r.d WHERE a.id = r.id;
                        END IF;
                    END LOOP;
                END IF;
            END IF;
            status := 'posted';
        END;
        $fn$;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP FUNCTION ledger_post_many(text[], text[], text[], jsonb[], bigint[], text[], text[],
                                       boolean[], boolean[], int[], text[], text[], bigint[]);
        DROP FUNCTION ledger_lock_accounts(text[]);
        DROP FUNCTION ledger_open_accounts(text[], text[], boolean[], boolean[]);
        DROP VIEW account_balances;
        UPDATE accounts a SET balance = a.balance + s.total
            FROM (SELECT account_id, sum(balance) AS total FROM account_shards
                  GROUP BY account_id) s WHERE a.id = s.account_id;
        DROP TABLE account_shards;
        ALTER TABLE accounts DROP CONSTRAINT accounts_sharded_only_unlimited;
        ALTER TABLE accounts DROP COLUMN sharded;
        """
    )
