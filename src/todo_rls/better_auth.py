"""Better Auth's side of the schema, as far as todo-rls needs a stand-in for it.

Better Auth creates and owns the ``"user"`` table (ADR 0004); todo-rls only references it. Where
no Better Auth has run (the demo, the bench, a test database), this DDL makes the same table.
"""

# Better Auth 1.x's DDL for its users table, verbatim: the stand-in for its own migration.
BETTER_AUTH_USER_DDL = """
create table "user" ("id" text not null primary key, "name" text not null,
  "email" text not null unique, "emailVerified" boolean not null, "image" text,
  "createdAt" timestamptz default CURRENT_TIMESTAMP not null,
  "updatedAt" timestamptz default CURRENT_TIMESTAMP not null)
"""
