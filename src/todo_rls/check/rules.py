"""The rule table of `todo-rls check` (docs/check.md), and running it."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from todo_rls.check.context import Context
from todo_rls.check.findings import Finding, Hit, Severity
from todo_rls.check.rules_access import definer_of_a_bypassing_owner, readable_past_rls
from todo_rls.check.rules_citus import (
    distributed_off_owner,
    exemptions,
    placement_not_forced,
    placement_policies_differ,
    worker_activity_visible,
)
from todo_rls.check.rules_identity import (
    app_can_sign,
    key_in_function_body,
    large_objects_outside_rls,
    no_active_key,
    verifier_unsound,
)
from todo_rls.check.rules_objects import (
    definer_without_search_path,
    fk_without_owner,
    view_as_owner,
)
from todo_rls.check.rules_policies import (
    call_per_row,
    command_without_policy,
    fail_open_predicate,
    forgeable_predicate,
    leaky_function_in_policy,
    policy_for_public,
    update_without_check,
)
from todo_rls.check.rules_roles import role_bypasses_rls, role_dangerous_privilege, role_owns_table
from todo_rls.check.rules_settings import (
    login_setting_default,
    session_setting_default,
    user_setting_default,
)
from todo_rls.check.rules_statistics import user_id_statistics
from todo_rls.check.rules_tables import owner_without_index, rls_disabled, rls_not_forced


@dataclass(frozen=True)
class Rule:
    """One row of the rule table: id, severity, what it flags, and the function that looks."""

    id: str
    severity: Severity
    description: str
    check: Callable[[Context], Iterator[Hit]]


RULES: tuple[Rule, ...] = (
    Rule("RLS001", "error", "table in scope without row-level security", rls_disabled),
    Rule("RLS002", "error", "row-level security enabled but not forced", rls_not_forced),
    Rule("IDX001", "warning", "owned table without an index leading with user_id",
         owner_without_index),
    Rule("POL001", "warning", "command with no policy for the app role", command_without_policy),
    Rule("POL002", "error", "policy for PUBLIC instead of the app role", policy_for_public),
    Rule("POL003", "error", "predicate other than the canonical owner check (may fail open)",
         fail_open_predicate),
    Rule("POL004", "warning", "UPDATE or ALL policy without WITH CHECK", update_without_check),
    Rule("POL005", "warning",
         "current_setting or the verifier outside a sub-select (evaluated per row)",
         call_per_row),
    Rule("POL006", "error", "policy calls a user function that is not LEAKPROOF",
         leaky_function_in_policy),
    Rule("POL007", "error", "policy keyed on the app.user_id setting itself (forgeable by SQL)",
         forgeable_predicate),
    Rule("ROLE001", "error",
         "app or login role is (a member of a) superuser, BYPASSRLS or CREATEROLE role",
         role_bypasses_rls),
    Rule("ROLE002", "error", "app or login role owns a table in scope", role_owns_table),
    Rule("ROLE003", "error", "app or login role holds TRUNCATE, TRIGGER, REFERENCES or CREATE",
         role_dangerous_privilege),
    Rule("FK001", "error", "foreign key to an owned parent without user_id", fk_without_owner),
    Rule("FN001", "error", "SECURITY DEFINER function without a fixed search_path",
         definer_without_search_path),
    Rule("FN002", "error", "SECURITY DEFINER function of a bypassing owner the app can run",
         definer_of_a_bypassing_owner),
    Rule("VIEW001", "error", "view of the app schema without security_invoker", view_as_owner),
    Rule("READ001", "error", "relation the app can read or write without forced RLS",
         readable_past_rls),
    Rule("SET001", "error", "database or role default for app.user_id", user_setting_default),
    Rule("SET002", "warning", "database or role default for search_path or row_security",
         session_setting_default),
    Rule("SET003", "error", "any other default of a login role (it can set its own)",
         login_setting_default),
    Rule("IDN001", "error", "the verifier is missing or runs as a role that can do more",
         verifier_unsound),
    Rule("IDN002", "error", "an app role can read or install a signing key, or run the key ring",
         app_can_sign),
    Rule("IDN003", "error", "a function body or setting holds key-sized material",
         key_in_function_body),
    Rule("IDN004", "warning", "no active signing key installed", no_active_key),
    Rule("LO001", "warning", "large objects an app role can reach (outside RLS)",
         large_objects_outside_rls),
    Rule("STAT001", "warning", "owned table whose user_id keeps statistics EXPLAIN can probe",
         user_id_statistics),
    Rule("CIT001", "error", "Citus shard placement without its table's forced RLS (or unreadable)",
         placement_not_forced),
    Rule("CIT002", "error", "Citus shard placement whose policies differ from its table's",
         placement_policies_differ),
    Rule("CIT003", "warning", "owned table distributed by Citus on a column other than user_id",
         distributed_off_owner),
    Rule("CIT004", "error", "Citus workers show an app login's query texts (its scope literals)",
         worker_activity_visible),
)  # fmt: skip


def run_rules(ctx: Context, rules: tuple[Rule, ...] = RULES) -> list[Finding]:
    """Every finding of every rule, in rule order, but those Citus's rules exempt."""
    exempt = exemptions(ctx)
    return [
        Finding(hit.object, rule.id, rule.severity, hit.message, hit.fix)
        for rule in rules
        for hit in rule.check(ctx)
        if (rule.id, hit.object) not in exempt
    ]
