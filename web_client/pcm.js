// PCM16 little-endian <-> base64, as the realtime protocol carries audio.
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function swapped(samples) {
  const bytes = new Uint8Array(samples.buffer, samples.byteOffset, samples.byteLength).slice();
  for (let i = 0; i < bytes.length; i += 2) [bytes[i], bytes[i + 1]] = [bytes[i + 1], bytes[i]];
  return bytes;
}

export function encodePcm16(samples) {
  const bytes = LITTLE_ENDIAN ? new Uint8Array(samples.buffer, samples.byteOffset, samples.byteLength) : swapped(samples);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

export function decodePcm16(base64) {
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length & ~1);
  for (let i = 0; i < bytes.length; i++) bytes[i] = binary.charCodeAt(i);
  const samples = new Int16Array(bytes.buffer);
  return LITTLE_ENDIAN ? samples : new Int16Array(swapped(samples).buffer);
}
