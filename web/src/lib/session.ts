// Placeholder: the session (sign-in, token storage, claims), owned by the core helper.
export async function restoreSession(): Promise<void> {}
