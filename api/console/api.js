// The HTTP side of the console: same-origin calls to the API with the bearer token.
// Commands answer 202 at once; their outcome arrives on the socket (the event, or `error`).

/** A refusal as the API describes it (problem+json). */
export class ApiError extends Error {
  constructor(status, body) {
    super(body?.detail || body?.title || `HTTP ${status}`);
    this.status = status;
    this.code = body?.code;
    this.field = body?.field;
  }
}

export class Api {
  constructor(token) {
    this.token = token;
  }

  async request(method, path, body) {
    const headers = { authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    const res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    if (!res.ok) throw new ApiError(res.status, json);
    return json;
  }

  get(path) {
    return this.request("GET", path);
  }

  /** `POST /api/chat/<operation>`: resolves with `{commandId, messageId?, conversationID}`. */
  command(operation, body) {
    return this.request("POST", `/api/chat/${operation}`, body);
  }
}

/** Dev mode only: a token for `userId` (the route answers 404 elsewhere). */
export async function devToken(userId, moderator) {
  const res = await fetch("/api/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ userId, moderator }),
  });
  const json = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, json);
  return json.token;
}

/** The claims of a JWT (not verified here: the servers verify it). */
export function claimsOf(token) {
  const part = token.split(".")[1];
  if (!part) throw new Error("that is not a JWT");
  const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
  return JSON.parse(new TextDecoder().decode(Uint8Array.from(json, (c) => c.charCodeAt(0))));
}
