// Strings of the actions area (French, the reference).
export const actions = {};
