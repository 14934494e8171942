// The replies being played, and what a barge-in cuts from them: shared by the conversation page
// and the kiosk. A barge-in mutes the reply's audio still on its way, flushes the player, and then
// truncates the reply's item to the audio the user actually heard.

export class ReplyPlayback {
  constructor() {
    this.responseOf = new Map(); // item id -> response id
    this.muted = new Set(); // response ids cut by a barge-in: their late audio stays silent
    this.ended = new Set(); // item ids whose response is done: nothing more of them will arrive
    this.current = null; // the assistant item whose audio arrived last
    this.cutting = null; // the item a barge-in in progress cuts, if nothing is left queued to tell
  }

  // An audio delta: true if it should be played (its reply was not cut).
  accept(event) {
    if (this.muted.has(event.response_id)) return false;
    this.responseOf.set(event.item_id, event.response_id);
    this.current = event.item_id;
    return true;
  }

  done(response) {
    const item = response.output && response.output[0];
    if (item) this.ended.add(item.id);
  }

  // A response whose audio, still arriving, must not play.
  mute(responseId) {
    if (responseId) this.muted.add(responseId);
  }

  // The user talked over the reply: call before flushing the player.
  bargeIn() {
    const responseId = this.responseOf.get(this.current);
    // Between two sentences the player can be empty while the server still makes the reply: that is
    // a cut too, though the flush drops nothing. Decided now, since response.done may beat "flushed".
    const unfinished = this.current && !this.ended.has(this.current) && !this.muted.has(responseId);
    this.cutting = unfinished ? this.current : null;
    this.mute(responseId);
  }

  // The player's "flushed" answer -> {itemId, audioEndMs, droppedFrames}, or null if nothing was cut.
  cut({ droppedFrames, itemId, playedMs }) {
    const cutItem = droppedFrames ? itemId : this.cutting;
    this.cutting = null;
    if (!cutItem || cutItem === "ack") return null; // "ack": the kiosk's wake chime, not a reply
    const audioEndMs = Math.round((playedMs && playedMs[cutItem]) || 0);
    return { itemId: cutItem, audioEndMs, droppedFrames };
  }
}

export function truncateEvent({ itemId, audioEndMs }) {
  return { type: "conversation.item.truncate", item_id: itemId, content_index: 0, audio_end_ms: audioEndMs };
}
