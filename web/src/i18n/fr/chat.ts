// Strings of the chat area (French, the reference).
export const chat = {};
