import type { Translation } from '..';
import type { chat as reference } from '../fr/chat';

export const chat: Translation<typeof reference> = {};
