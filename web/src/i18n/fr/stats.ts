// Strings of the stats area (French, the reference).
export const stats = {};
