// A minimal Better Auth server for the todo-rls FastAPI example: email + password sign-up,
// bearer session tokens, and EdDSA JWTs (the `jwt` plugin) that the API verifies against
// /api/auth/jwks. It runs Better Auth's own migration, so the real "user" table exists before
// `todo-rls migrate` references it.
//
//   node server.mjs migrate            create/upgrade Better Auth's tables, then exit
//   node server.mjs serve [--port N]   migrate, then listen on 127.0.0.1:N (default $PORT or 3000)
//
// Environment:
//   DATABASE_URL          the database todo-rls uses, as a role that may create tables (owner)
//   BETTER_AUTH_SECRET    at least 32 random characters; encrypts the JWT signing key at rest
//   BETTER_AUTH_URL       public base URL (default http://127.0.0.1:<port>); it is the Origin
//                         sign-up must send and the JWTs' `iss` and `aud`
//   JWT_EXPIRATION_TIME   lifetime of issued JWTs (Better Auth's jwt.expirationTime, default 15m)
//   JWT_ISSUER, JWT_AUDIENCE  the JWTs' `iss` and `aud` (default: baseURL); the API checks both
import http from "node:http";
import process from "node:process";

import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";
import { bearer, jwt } from "better-auth/plugins";
import pg from "pg";

function fail(message) {
  console.error(`better-auth example: ${message}`);
  process.exit(2);
}

function parseArgs(argv) {
  const [command = "serve", ...rest] = argv;
  if (!["serve", "migrate"].includes(command)) {
    fail(`unknown command ${JSON.stringify(command)}; use "serve" or "migrate"`);
  }
  let port = process.env.PORT ?? "3000";
  for (let i = 0; i < rest.length; i += 1) {
    if (rest[i] === "--port" && i + 1 < rest.length) port = rest[(i += 1)];
    else fail(`unexpected argument ${JSON.stringify(rest[i])}; usage: serve [--port N]`);
  }
  if (!/^\d+$/.test(port) || Number(port) < 1 || Number(port) > 65535) {
    fail(`port must be a number from 1 to 65535, not ${JSON.stringify(port)}`);
  }
  return { command, port: Number(port) };
}

function requiredEnv(name, hint) {
  const value = process.env[name];
  if (!value) fail(`${name} is not set: ${hint}`);
  return value;
}

const { command, port } = parseArgs(process.argv.slice(2));
const databaseUrl = requiredEnv("DATABASE_URL", "export DATABASE_URL=postgresql://OWNER@HOST/DB");
const secret = requiredEnv("BETTER_AUTH_SECRET", "export BETTER_AUTH_SECRET=$(openssl rand -hex 32)");
if (secret.length < 32) fail("BETTER_AUTH_SECRET must be at least 32 characters long");
const baseURL = process.env.BETTER_AUTH_URL || `http://127.0.0.1:${port}`;

const pool = new pg.Pool({ connectionString: databaseUrl, max: 5 });

const auth = betterAuth({
  baseURL,
  secret,
  database: pool,
  emailAndPassword: { enabled: true },
  plugins: [
    // Signs JWTs with an Ed25519 key kept (encrypted) in the "jwks" table; the API only ever
    // sees the public half, from /api/auth/jwks.
    jwt({
      jwt: {
        expirationTime: process.env.JWT_EXPIRATION_TIME || "15m",
        issuer: process.env.JWT_ISSUER || baseURL,
        audience: process.env.JWT_AUDIENCE || baseURL,
      },
    }),
    // Answers sign-up/sign-in with a `set-auth-token` header and accepts that session token
    // as `Authorization: Bearer ...` (for example on GET /api/auth/token).
    bearer(),
  ],
  telemetry: { enabled: false },
});

async function migrate() {
  const { toBeCreated, toBeAdded, runMigrations } = await getMigrations(auth.options);
  await runMigrations();
  const tables = toBeCreated.map((t) => t.table).join(", ") || "none";
  console.log(`better-auth: migrated (created: ${tables}; altered: ${toBeAdded.length})`);
}

try {
  await migrate();
} catch (error) {
  await pool.end();
  fail(`migration failed: ${error.message}`);
}

if (command === "migrate") {
  await pool.end();
} else {
  const server = http.createServer(toNodeHandler(auth));
  const stop = () => {
    server.close(() => pool.end().then(() => process.exit(0)));
    server.closeAllConnections(); // keep-alive clients must not hold the shutdown open
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  // Loopback only: put a TLS-terminating proxy in front for anything but local development.
  server.listen(port, "127.0.0.1", () => {
    console.log(`better-auth: listening on http://127.0.0.1:${port} (baseURL ${baseURL})`);
  });
}
