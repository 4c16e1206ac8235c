"""The guard's trailing windows as arguments of ``wallet_lock_context``.

Migration 0016's function wrote the 24 h / 7 d windows as literals, a second copy of
``domain.guard.DAILY_WINDOW`` / ``WEEKLY_WINDOW``; the function now takes them
(``p_day``, ``p_week``) and the caller binds the domain's values.  Same statement, same
round trips, same result.

Revision ID: 0017
Revises: 0016
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_OLD = "wallet_lock_context(text[], text[], boolean[], boolean[], text[], text[], boolean[], text[], text, timestamptz)"


def upgrade() -> None:
    op.execute(f"DROP FUNCTION {_OLD}")
    op.execute(
        """
        CREATE FUNCTION wallet_lock_context(
            p_codes text[], p_curs text[], p_negs boolean[], p_sharded boolean[],
            p_users text[], p_wcurs text[], p_mine boolean[], p_kinds text[], p_default text,
            p_now timestamptz, p_day interval, p_week interval)
            RETURNS TABLE (what text, id bigint, code text, currency text,
                           allow_negative boolean, sharded boolean, balance bigint,
                           user_id text, stored_tier text, tier text, min_balance bigint,
                           max_balance bigint, daily_limit bigint, weekly_limit bigint,
                           warning_threshold bigint, critical_threshold bigint,
                           daily bigint, weekly bigint, alert_keys text[],
                           alert_befores bigint[])
        LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
        #variable_conflict use_column
        BEGIN
            -- Open (when missing), then lock: never wait on another's new account while
            -- holding locks.
            IF (SELECT count(*) FROM accounts a WHERE a.code = ANY(p_codes))
               < cardinality(p_codes) THEN
                PERFORM ledger_open_accounts(p_codes, p_curs, p_negs, p_sharded);
            END IF;
            RETURN QUERY SELECT 'account'::text, l.id, l.code, l.currency, l.allow_negative,
                    l.sharded, l.balance, NULL::text, NULL::text, NULL::text, NULL::bigint,
                    NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                    NULL::bigint, NULL::bigint, NULL::text[], NULL::bigint[]
                FROM ledger_lock_accounts(p_codes) l;
            -- A new statement, a new snapshot: taken after every lock above was granted.
            RETURN QUERY
            WITH t AS (SELECT COALESCE(p_now, now()) AS now),
            w AS (SELECT * FROM unnest(p_users, p_wcurs, p_mine) AS w(user_id, currency, mine))
            SELECT 'wallet'::text, NULL::bigint, NULL::text, w.currency, NULL::boolean,
                   NULL::boolean, NULL::bigint, w.user_id, ut.tier,
                   COALESCE(ut.tier, p_default), g.min_balance, g.max_balance, g.daily_limit,
                   g.weekly_limit, g.warning_threshold, g.critical_threshold,
                   u.daily::bigint, u.weekly::bigint, al.keys, al.befores
            FROM w CROSS JOIN t
            LEFT JOIN user_tiers ut ON ut.user_id = w.user_id
            LEFT JOIN guard_limits g ON g.tier = COALESCE(ut.tier, p_default)
                AND g.currency = w.currency
            LEFT JOIN LATERAL (SELECT
                COALESCE(sum(abs(a.amount)) FILTER (WHERE a.created_at > t.now - p_day), 0) AS daily,
                COALESCE(sum(abs(a.amount)), 0) AS weekly FROM wallet_audit a
                WHERE a.user_id = w.user_id AND a.currency = w.currency AND a.user_initiated
                AND a.created_at > t.now - p_week) u ON w.mine
            LEFT JOIN LATERAL (SELECT array_agg(a.dedupe_key) AS keys, array_agg(CASE WHEN
                a.kind = 'significant_drop' THEN CAST(a.data->>'balance_before' AS bigint) END)
                AS befores
                FROM alerts a WHERE a.status <> 'resolved' AND a.dedupe_key = ANY(ARRAY(
                    SELECT k || ':' || w.user_id || ':' || w.currency
                    FROM unnest(p_kinds) AS k))) al ON true;
        END;
        $fn$;
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION wallet_lock_context(text[], text[], boolean[], boolean[], text[], text[], boolean[], text[], text, timestamptz, interval, interval)")
    op.execute(
        """
        CREATE FUNCTION wallet_lock_context(
            p_codes text[], p_curs text[], p_negs boolean[], p_sharded boolean[],
            p_users text[], p_wcurs text[], p_mine boolean[], p_kinds text[], p_default text,
            p_now timestamptz)
            RETURNS TABLE (what text, id bigint, code text, currency text,
                           allow_negative boolean, sharded boolean, balance bigint,
                           user_id text, stored_tier text, tier text, min_balance bigint,
                           max_balance bigint, daily_limit bigint, weekly_limit bigint,
                           warning_threshold bigint, critical_threshold bigint,
                           daily bigint, weekly bigint, alert_keys text[],
                           alert_befores bigint[])
        LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
        #variable_conflict use_column
        BEGIN
            -- Open (when missing), then lock: never wait on another's new account while
            -- holding locks.
            IF (SELECT count(*) FROM accounts a WHERE a.code = ANY(p_codes))
               < cardinality(p_codes) THEN
                PERFORM ledger_open_accounts(p_codes, p_curs, p_negs, p_sharded);
            END IF;
            RETURN QUERY SELECT 'account'::text, l.id, l.code, l.currency, l.allow_negative,
                    l.sharded, l.balance, NULL::text, NULL::text, NULL::text, NULL::bigint,
                    NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                    NULL::bigint, NULL::bigint, NULL::text[], NULL::bigint[]
                FROM ledger_lock_accounts(p_codes) l;
            -- A new statement, a new snapshot: taken after every lock above was granted.
            RETURN QUERY
            WITH t AS (SELECT COALESCE(p_now, now()) AS now),
            w AS (SELECT * FROM unnest(p_users, p_wcurs, p_mine) AS w(user_id, currency, mine))
            SELECT 'wallet'::text, NULL::bigint, NULL::text, w.currency, NULL::boolean,
                   NULL::boolean, NULL::bigint, w.user_id, ut.tier,
                   COALESCE(ut.tier, p_default), g.min_balance, g.max_balance, g.daily_limit,
                   g.weekly_limit, g.warning_threshold, g.critical_threshold,
                   u.daily::bigint, u.weekly::bigint, al.keys, al.befores
            FROM w CROSS JOIN t
            LEFT JOIN user_tiers ut ON ut.user_id = w.user_id
            LEFT JOIN guard_limits g ON g.tier = COALESCE(ut.tier, p_default)
                AND g.currency = w.currency
            LEFT JOIN LATERAL (SELECT
                COALESCE(sum(abs(a.amount)) FILTER (WHERE a.created_at > t.now - interval '24 hours'), 0) AS daily,
                COALESCE(sum(abs(a.amount)), 0) AS weekly FROM wallet_audit a
                WHERE a.user_id = w.user_id AND a.currency = w.currency AND a.user_initiated
                AND a.created_at > t.now - interval '7 days') u ON w.mine
            LEFT JOIN LATERAL (SELECT array_agg(a.dedupe_key) AS keys, array_agg(CASE WHEN
                a.kind = 'significant_drop' THEN CAST(a.data->>'balance_before' AS bigint) END)
                AS befores
                FROM alerts a WHERE a.status <> 'resolved' AND a.dedupe_key = ANY(ARRAY(
                    SELECT k || ':' || w.user_id || ':' || w.currency
                    FROM unnest(p_kinds) AS k))) al ON true;
        END;
        $fn$;
        """
    )
