// A small WHIP (RFC 9725) publisher: one RTCPeerConnection, one POST, one DELETE.

const GATHER_TIMEOUT_MS = 2500;

export class WhipError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/** Publishes a MediaStream to a WHIP endpoint; `onState(state)` follows the connection. */
export class WhipPublisher {
  constructor(endpoint, { token = null, iceServers = [], onState = () => {} } = {}) {
    this.endpoint = endpoint;
    this.token = token;
    this.iceServers = iceServers;
    this.onState = onState;
    this.pc = null;
    this.location = null;
  }

  headers(extra = {}) {
    return this.token ? { ...extra, Authorization: `Bearer ${this.token}` } : extra;
  }

  async start(media) {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers, bundlePolicy: "max-bundle" });
    this.pc = pc;
    pc.addEventListener("connectionstatechange", () => this.onState(pc.connectionState));
    for (const track of media.getTracks()) {
      pc.addTransceiver(track, { direction: "sendonly", streams: [media] });
    }
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc); // no trickle: the offer carries every candidate
    const response = await fetch(this.endpoint, {
      method: "POST",
      headers: this.headers({ "Content-Type": "application/sdp" }),
      body: pc.localDescription.sdp,
    });
    if (response.status !== 201) {
      pc.close();
      this.pc = null;
      throw new WhipError(await reason(response), response.status);
    }
    const where = response.headers.get("Location");
    this.location = where ? new URL(where, new URL(this.endpoint, location.href)).href : null;
    await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
    return this.location;
  }

  async stop() {
    const where = this.location;
    this.location = null;
    if (this.pc) {
      this.pc.close();
      this.pc = null;
    }
    if (where) {
      try {
        await fetch(where, { method: "DELETE", headers: this.headers() });
      } catch {
        // the service is gone: the session ends on its side when media stops
      }
    }
  }
}

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHER_TIMEOUT_MS); // use what was gathered by then
  });
}

async function reason(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch {
    // not JSON
  }
  return `The service answered ${response.status} ${response.statusText}.`;
}
