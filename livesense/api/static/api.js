// The service's HTTP/WebSocket API as the page uses it (bearer token from this browser).

const TOKEN_KEY = "livesense.token";

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

export const auth = {
  get token() {
    return localStorage.getItem(TOKEN_KEY) || "";
  },
  set token(value) {
    if (value) localStorage.setItem(TOKEN_KEY, value);
    else localStorage.removeItem(TOKEN_KEY);
  },
  headers(extra = {}) {
    const token = this.token;
    return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
  },
};

async function call(path, options = {}) {
  const response = await fetch(path, { ...options, headers: auth.headers(options.headers) });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error || message;
    } catch {
      // not JSON
    }
    throw new ApiError(message, response.status);
  }
  return response.json();
}

export const api = {
  streams: () => call("/v1/streams"),
  timeline: (stream, limit = 30) =>
    call(`/v1/streams/${encodeURIComponent(stream)}/timeline?limit=${limit}`),
  search: (q, stream, topK = 8) => {
    const params = new URLSearchParams({ q, top_k: String(topK) });
    if (stream) params.set("stream", stream);
    return call(`/v1/search?${params}`);
  },
  ask: (question, stream) =>
    call("/v1/ask", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(stream ? { question, stream } : { question }),
    }),
  watch(q, stream) {
    const params = new URLSearchParams({ q });
    if (stream) params.set("stream", stream);
    if (auth.token) params.set("token", auth.token);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    return new WebSocket(`${scheme}://${location.host}/v1/watch?${params}`);
  },
};

// Keyframes need the token, so they are fetched and shown as object URLs (kept, bounded).
const images = new Map();
const IMAGE_CACHE = 300;

export function keyframe(url) {
  if (!url) return Promise.resolve(null);
  let found = images.get(url);
  if (!found) {
    found = fetch(url, { headers: auth.headers() })
      .then((r) => (r.ok ? r.blob() : null))
      .then((blob) => (blob ? URL.createObjectURL(blob) : null))
      .catch(() => null);
    images.set(url, found);
    if (images.size > IMAGE_CACHE) {
      const [oldest, value] = images.entries().next().value;
      images.delete(oldest);
      value.then((u) => u && URL.revokeObjectURL(u));
    }
  }
  return found;
}
